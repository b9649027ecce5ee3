#!/usr/bin/env bash
# Regenerates gen/ from ../../proto. Needs protoc (or $PROTOC) and the two Go plugins:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
# The generated code is committed (the Go convention), so building the bot needs none of this.
set -euo pipefail
cd "$(dirname "$0")"
PROTO=../../proto
MOD=puppet-rs.example/dingdong/gen
PROTOC=${PROTOC:-protoc}
map="Mwechaty/puppet.proto=$MOD/wechaty,Mwechaty/deprecated/file-box.proto=$MOD/wechaty/puppet"
for f in "$PROTO"/wechaty/puppet/*.proto; do
  map="$map,Mwechaty/puppet/$(basename "$f")=$MOD/wechaty/puppet"
done
rm -rf gen && mkdir -p gen
files=(wechaty/puppet.proto wechaty/deprecated/file-box.proto)
for f in "$PROTO"/wechaty/puppet/*.proto; do files+=("wechaty/puppet/$(basename "$f")"); done
"$PROTOC" -I "$PROTO" \
  --go_out=gen --go_opt=module=$MOD --go_opt="$map" \
  --go-grpc_out=gen --go-grpc_opt=module=$MOD --go-grpc_opt="$map" \
  "${files[@]}"
echo "generated $(find gen -name '*.go' | wc -l) files in gen/"

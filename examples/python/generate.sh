#!/usr/bin/env bash
# Generates the Python stubs into gen/ from ../../proto with grpcio-tools (pip install -r
# requirements.txt). They are not committed: run this after cloning and after the proto changes.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
rm -rf gen && mkdir -p gen
files=(wechaty/puppet.proto wechaty/deprecated/file-box.proto)
for f in ../../proto/wechaty/puppet/*.proto; do files+=("wechaty/puppet/$(basename "$f")"); done
"$PYTHON" -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen "${files[@]}"
echo "generated $(find gen -name '*.py' | wc -l) modules in gen/"

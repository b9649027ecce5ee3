// Calls wechaty.Puppet over gRPC-Web with @connectrpc/connect-web (the transport browsers use),
// from the server's own descriptor set, no generated code: Version, then the Event stream until a
// MESSAGE arrives. Prints one JSON line per result.
//
//   node client.mjs <base url> <token> <descriptor set file>
import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

const [baseUrl, token, descriptors] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const Puppet = registry.getService("wechaty.Puppet");
const auth = (next) => async (req) => {
  req.header.set("authorization", `Wechaty ${token}`);
  return next(req);
};
const transport = createGrpcWebTransport({ baseUrl, interceptors: [auth] });
const puppet = createClient(Puppet, transport);

const { version } = await puppet.version({});
console.log(JSON.stringify({ version }));
for await (const event of puppet.event({})) {
  console.log(JSON.stringify({ type: event.type, payload: event.payload }));
  if (event.type === 2) break;
}
// The kept-alive connection would hold the process open.
process.exit(0);

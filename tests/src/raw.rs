//! Raw gRPC for hostile tests: any method by path, request bytes built from the contract's
//! descriptors with every string field set to a chosen value — so a test covers every unary RPC
//! of a service, including those added later, without a hand-written call per method.

use std::collections::HashMap;

use bytes::{Buf, BufMut};
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A codec that passes message bytes through untouched.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// One unary method: its path and its request message's full name.
#[derive(Clone, Debug)]
pub struct Method {
    /// `/package.Service/Method`.
    pub path: String,
    /// `.package.Message`.
    pub input: String,
}

/// The contract's messages and methods, read from `puppet_proto::pb::FILE_DESCRIPTOR_SET`.
pub struct Contract {
    messages: HashMap<String, DescriptorProto>,
    services: HashMap<String, Vec<(Method, bool)>>,
}

impl Contract {
    /// Reads the embedded descriptors.
    pub fn load() -> Self {
        let set = FileDescriptorSet::decode(puppet_proto::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut messages = HashMap::new();
        let mut services: HashMap<String, Vec<(Method, bool)>> = HashMap::new();
        fn add(prefix: &str, m: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
            let name = format!("{prefix}.{}", m.name());
            for nested in &m.nested_type {
                add(&name, nested, out);
            }
            out.insert(name, m.clone());
        }
        for file in set.file {
            let prefix = format!(".{}", file.package());
            for m in &file.message_type {
                add(&prefix, m, &mut messages);
            }
            for s in &file.service {
                let full = format!("{}.{}", file.package(), s.name());
                for m in &s.method {
                    let unary = !m.client_streaming() && !m.server_streaming();
                    let method = Method { path: format!("/{full}/{}", m.name()), input: m.input_type().to_owned() };
                    services.entry(full.clone()).or_default().push((method, unary));
                }
            }
        }
        Self { messages, services }
    }

    /// The unary methods of `service` (e.g. `wechaty.Puppet`).
    pub fn unary_methods(&self, service: &str) -> Vec<Method> {
        self.services
            .get(service)
            .map(|ms| ms.iter().filter(|(_, unary)| *unary).map(|(m, _)| m.clone()).collect())
            .unwrap_or_default()
    }

    /// A request of type `message` (full name) whose string fields — top-level, repeated (one
    /// element), and inside nested messages such as `StringValue`, a location or a card — are each
    /// set to `value(field_name)`. Numbers, booleans and enums stay zero.
    pub fn request(&self, message: &str, value: &dyn Fn(&str) -> String) -> Vec<u8> {
        self.encode(message, value, 0)
    }

    fn encode(&self, message: &str, value: &dyn Fn(&str) -> String, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(m) = self.messages.get(message) else { return out };
        if depth > 3 {
            return out;
        }
        for f in &m.field {
            // A repeated field gets one element, encoded the same way as a singular one.
            let bytes = match f.r#type() {
                Type::String => value(f.name()).into_bytes(),
                Type::Message => self.encode(f.type_name(), value, depth + 1),
                _ => continue,
            };
            put_varint(&mut out, (u64::from(f.number() as u32) << 3) | 2);
            put_varint(&mut out, bytes.len() as u64);
            out.extend_from_slice(&bytes);
        }
        out
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Calls a unary method with raw request bytes and the given token.
pub async fn call(channel: &Channel, path: &str, token: &str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = Request::new(body);
    req.metadata_mut().insert("authorization", format!("Wechaty {token}").parse().expect("ascii token"));
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_owned()).expect("path");
    grpc.unary(req, path, RawCodec).await.map(tonic::Response::into_inner)
}

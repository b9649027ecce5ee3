//! `/openapi.json`: an OpenAPI 3.1 document of the REST routes, generated from the same
//! descriptors and annotations the routes are served from ([`super::rest::Rest`]), with the proto
//! comments as descriptions. Schemas follow proto3 JSON: lowerCamelCase names, 64-bit integers as
//! strings, enums by name, bytes as base64.

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{DescriptorPool, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{Map, Value as Json, json};

use super::rest::{Rest, Route};

/// Proto comments by (file, source path).
struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    fn of(pool: &DescriptorPool) -> Self {
        let mut map = HashMap::new();
        for file in pool.files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else { continue };
            for loc in &info.location {
                let text = loc.leading_comments.as_deref().or(loc.trailing_comments.as_deref()).unwrap_or("");
                let text = text.lines().map(str::trim).collect::<Vec<_>>().join("\n").trim().to_owned();
                if !text.is_empty() {
                    map.insert((file.name().to_owned(), loc.path.clone()), text);
                }
            }
        }
        Self(map)
    }

    fn get(&self, file: &FileDescriptor, path: &[i32]) -> Option<&str> {
        self.0.get(&(file.name().to_owned(), path.to_vec())).map(String::as_str)
    }

    fn message(&self, m: &MessageDescriptor) -> Option<&str> {
        self.get(&m.parent_file(), m.path())
    }

    fn field(&self, f: &FieldDescriptor) -> Option<&str> {
        self.get(&f.parent_file(), f.path())
    }

    fn method(&self, m: &MethodDescriptor) -> Option<&str> {
        self.get(&m.parent_file(), m.path())
    }
}

fn schema_ref(m: &MessageDescriptor) -> Json {
    json!({ "$ref": format!("#/components/schemas/{}", m.full_name()) })
}

/// The JSON schema of a single value of `kind`, recording messages to describe.
fn kind_schema(kind: &Kind, todo: &mut Vec<MessageDescriptor>) -> Json {
    match kind {
        Kind::String => json!({ "type": "string" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
        Kind::Float => json!({ "type": "number", "format": "float" }),
        Kind::Double => json!({ "type": "number", "format": "double" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => {
            json!({ "type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>() })
        }
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => json!({ "type": "string" }),
            "google.protobuf.StringValue" => json!({ "type": ["string", "null"] }),
            "google.protobuf.BoolValue" => json!({ "type": ["boolean", "null"] }),
            "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({ "type": ["integer", "null"] }),
            "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => json!({ "type": ["string", "null"] }),
            "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({ "type": ["number", "null"] }),
            "google.protobuf.BytesValue" => json!({ "type": ["string", "null"], "contentEncoding": "base64" }),
            "google.protobuf.Struct" => json!({ "type": "object" }),
            "google.protobuf.Value" | "google.protobuf.Any" => json!({}),
            _ => {
                todo.push(m.clone());
                schema_ref(m)
            }
        },
    }
}

fn field_schema(f: &FieldDescriptor, comments: &Comments, todo: &mut Vec<MessageDescriptor>) -> Json {
    let mut schema = if f.is_map() {
        let Kind::Message(entry) = f.kind() else { return json!({}) };
        let value = entry.map_entry_value_field();
        json!({ "type": "object", "additionalProperties": kind_schema(&value.kind(), todo) })
    } else if f.is_list() {
        json!({ "type": "array", "items": kind_schema(&f.kind(), todo) })
    } else {
        kind_schema(&f.kind(), todo)
    };
    // (OpenAPI 3.1 allows a description beside a $ref.)
    if let (Some(text), Some(obj)) = (comments.field(f), schema.as_object_mut()) {
        obj.insert("description".into(), text.into());
    }
    if f.field_descriptor_proto().options.as_ref().and_then(|o| o.deprecated).unwrap_or(false)
        && let Some(obj) = schema.as_object_mut()
    {
        obj.insert("deprecated".into(), true.into());
    }
    schema
}

fn message_schema(m: &MessageDescriptor, comments: &Comments, todo: &mut Vec<MessageDescriptor>) -> Json {
    let mut properties = Map::new();
    for f in m.fields() {
        properties.insert(f.json_name().to_owned(), field_schema(&f, comments, todo));
    }
    let mut schema = json!({ "type": "object", "properties": properties, "additionalProperties": false });
    if let Some(text) = comments.message(m) {
        schema["description"] = text.into();
    }
    schema
}

fn status_schema() -> Json {
    json!({
        "type": "object",
        "description": "google.rpc.Status: the gRPC status code and a message that says what went wrong.",
        "properties": {
            "code": { "type": "integer", "format": "int32", "description": "The gRPC status code." },
            "message": { "type": "string" },
            "details": { "type": "array", "items": { "type": "object" } },
        },
        "required": ["code", "message"],
    })
}

/// The query parameters of a route without a `*` body: the input's scalar fields the path does
/// not bind.
fn query_parameters(route: &Route, todo: &mut Vec<MessageDescriptor>, comments: &Comments) -> Vec<Json> {
    if route.body == "*" {
        return Vec::new();
    }
    let bound: Vec<&str> = route.path_fields().collect();
    route
        .method
        .input()
        .fields()
        .filter(|f| !bound.contains(&f.name()) && !matches!(f.kind(), Kind::Message(_)) && !f.is_map())
        .map(|f| {
            let mut p = json!({ "name": f.name(), "in": "query", "required": false, "schema": field_schema(&f, comments, todo) });
            if f.is_list() {
                p["explode"] = true.into();
            }
            p
        })
        .collect()
}

/// The OpenAPI 3.1 document of `rest`'s routes.
pub fn document(rest: &Rest) -> Json {
    let comments = Comments::of(rest.pool());
    let mut todo: Vec<MessageDescriptor> = Vec::new();
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    for route in rest.routes() {
        let method = &route.method;
        let n = operation_ids.entry(method.name().to_owned()).or_default();
        *n += 1;
        let operation_id = if *n == 1 { method.name().to_owned() } else { format!("{}{}", method.name(), n) };
        let fixed = route.fixed_fields();
        let mut parameters: Vec<Json> = route
            .path_fields()
            .filter(|f| !fixed.iter().any(|(name, _)| name == f))
            .map(|field| {
                let schema = route
                    .method
                    .input()
                    .get_field_by_name(field)
                    .map(|f| field_schema(&f, &comments, &mut todo))
                    .unwrap_or_else(|| json!({ "type": "string" }));
                json!({ "name": field, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        parameters.extend(query_parameters(route, &mut todo, &comments));
        let mut description = comments.method(method).unwrap_or_default().to_owned();
        for (field, value) in &fixed {
            description.push_str(&format!("\n\n`{field}` is {value} on this path."));
        }
        let mut op = json!({
            "operationId": operation_id,
            "summary": format!("{} ({})", method.name(), method.full_name()),
            "tags": [tag(&route.template)],
            "parameters": parameters,
            "responses": {
                "default": {
                    "description": "An error: the HTTP status of its gRPC code, and the status.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/google.rpc.Status" } } },
                },
            },
        });
        if !description.trim().is_empty() {
            op["description"] = description.trim().into();
        }
        let output = method.output();
        let ok = match method.name() {
            "Event" => {
                if let Some(m) = rest.pool().get_message_by_name("puppet_rs.v1.SequencedEvent") {
                    todo.push(m.clone());
                }
                if let Some(p) = op["parameters"].as_array_mut() {
                    p.push(json!({ "name": "after_seq", "in": "query", "required": false,
                        "description": "Resume: every retained event after this sequence number (or send Last-Event-ID).",
                        "schema": { "type": "integer", "format": "int64", "minimum": 0 } }));
                    p.push(json!({ "name": "Last-Event-ID", "in": "header", "required": false,
                        "description": "Resume after this sequence number, as EventSource sends it on reconnect.",
                        "schema": { "type": "string" } }));
                }
                json!({
                    "description": "Server-Sent Events: each `data:` is the JSON of a puppet_rs.v1.SequencedEvent, `id:` its sequence number; heartbeats are comments; an `error` event (google.rpc.Status plus resumeAfterSeq) ends a stream that fell too far behind.",
                    "content": { "text/event-stream": { "schema": { "$ref": "#/components/schemas/puppet_rs.v1.SequencedEvent" } } },
                })
            }
            "Download" => json!({
                "description": "The file's bytes (Range requests answered 206).",
                "content": { "application/octet-stream": { "schema": { "type": "string", "contentMediaType": "application/octet-stream" } } },
            }),
            _ => {
                todo.push(output.clone());
                json!({ "description": "OK", "content": { "application/json": { "schema": schema_ref(&output) } } })
            }
        };
        op["responses"]["200"] = ok;
        match (method.name(), route.body.as_str()) {
            ("Upload", _) => {
                op["requestBody"] = json!({
                    "required": true,
                    "description": "The file's bytes, as the raw body.",
                    "content": { "application/octet-stream": { "schema": { "type": "string", "contentMediaType": "application/octet-stream" } } },
                });
            }
            (_, "") => {}
            (_, _) => {
                todo.push(method.input());
                op["requestBody"] = json!({
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref(&method.input()) } },
                });
            }
        }
        paths.entry(route.openapi_path()).or_default().insert(route.verb.as_str().to_ascii_lowercase(), op);
    }
    let mut schemas = Map::new();
    schemas.insert("google.rpc.Status".into(), status_schema());
    while let Some(m) = todo.pop() {
        if schemas.contains_key(m.full_name()) {
            continue;
        }
        let schema = message_schema(&m, &comments, &mut todo);
        schemas.insert(m.full_name().to_owned(), schema);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "puppet-rs: wechaty.Puppet over HTTP",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST routes upstream wechaty-grpc annotates (google.api.http), served by puppet-rs on its side port. Send the account's token as `Authorization: Bearer <token>` (or `Wechaty <token>`). Bodies and answers are proto3 JSON.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "security": [{ "token": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer", "description": "The account's token." } },
        },
    })
}

/// The last literal segment of a path's first segments, as a tag (`/contacts/{id}` → contacts).
fn tag(template: &str) -> String {
    template.trim_start_matches('/').split('/').next().unwrap_or("puppet").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document_with_its_schemas() {
        let rest = Rest::builtin().unwrap();
        let doc = document(&rest);
        let paths = doc["paths"].as_object().unwrap();
        for route in rest.routes() {
            let verb = route.verb.as_str().to_ascii_lowercase();
            assert!(paths[&route.openapi_path()][&verb].is_object(), "{} {}", route.verb, route.template);
        }
        // Every $ref resolves.
        let text = doc.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "unresolved {name}");
        }
        let op = &paths["/contacts/{id}"]["get"];
        assert_eq!(op["parameters"][0]["name"], "id");
        assert_eq!(paths["/rooms/{id}/dirty/PAYLOAD_TYPE_ROOM"]["put"]["operationId"], "DirtyPayload3");
    }
}

//! Descriptor comparison for the wire-compatibility proof: every service method, message field and
//! enum value of the upstream contract must exist identically in ours. Additions are allowed.

use std::collections::HashMap;

use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

/// Removes the grpc-gateway / openapiv2 options and their imports from an upstream `.proto` text
/// (the npm package ships them without the files they import; they do not affect the wire).
pub fn strip_gateway_options(text: &str) -> String {
    let text: String = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("import \"google/api/") || t.starts_with("import \"protoc-gen-openapiv2/"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("option") && is_custom_option(&text[i + "option".len()..]) {
            i = end_of_statement(bytes, i);
            continue;
        }
        let ch = text[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn is_custom_option(rest: &str) -> bool {
    rest.trim_start().starts_with('(')
}

/// Index just past the `;` that ends the statement starting at `start`, skipping strings, line
/// comments and nested braces.
fn end_of_statement(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

fn collect_messages<'a>(prefix: &str, msgs: &'a [DescriptorProto], out: &mut HashMap<String, &'a DescriptorProto>) {
    for m in msgs {
        let name = format!("{prefix}.{}", m.name());
        collect_messages(&name, &m.nested_type, out);
        out.insert(name, m);
    }
}

fn collect_enums<'a>(
    prefix: &str,
    enums: &'a [EnumDescriptorProto],
    msgs: &'a [DescriptorProto],
    out: &mut HashMap<String, &'a EnumDescriptorProto>,
) {
    for e in enums {
        out.insert(format!("{prefix}.{}", e.name()), e);
    }
    for m in msgs {
        collect_enums(&format!("{prefix}.{}", m.name()), &m.enum_type, &m.nested_type, out);
    }
}

struct Index<'a> {
    services: HashMap<String, &'a prost_types::ServiceDescriptorProto>,
    messages: HashMap<String, &'a DescriptorProto>,
    enums: HashMap<String, &'a EnumDescriptorProto>,
}

fn index(set: &FileDescriptorSet) -> Index<'_> {
    let mut idx = Index { services: HashMap::new(), messages: HashMap::new(), enums: HashMap::new() };
    for f in &set.file {
        let pkg = if f.package().is_empty() { String::new() } else { format!(".{}", f.package()) };
        for s in &f.service {
            idx.services.insert(format!("{pkg}.{}", s.name()), s);
        }
        collect_messages(&pkg, &f.message_type, &mut idx.messages);
        collect_enums(&pkg, &f.enum_type, &f.message_type, &mut idx.enums);
    }
    idx
}

/// Every way `ours` differs from `upstream`, one line each, naming the item. Empty means compatible.
/// Only packages `wechaty` and `wechaty.puppet` are compared (not the well-known types).
pub fn compare(upstream: &FileDescriptorSet, ours: &FileDescriptorSet) -> Vec<String> {
    let (up, us) = (index(upstream), index(ours));
    let in_scope = |name: &str| name.starts_with(".wechaty.");
    let mut problems = Vec::new();

    for (name, s) in up.services.iter().filter(|(n, _)| in_scope(n)) {
        let Some(o) = us.services.get(name) else {
            problems.push(format!("service {name} is missing"));
            continue;
        };
        for m in &s.method {
            let Some(om) = o.method.iter().find(|x| x.name() == m.name()) else {
                problems.push(format!("method {name}/{} is missing", m.name()));
                continue;
            };
            let sig = |x: &prost_types::MethodDescriptorProto| {
                (x.input_type().to_owned(), x.output_type().to_owned(), x.client_streaming(), x.server_streaming())
            };
            if sig(m) != sig(om) {
                problems.push(format!(
                    "method {name}/{}: upstream (in, out, client_streaming, server_streaming) = {:?}, ours = {:?}",
                    m.name(),
                    sig(m),
                    sig(om)
                ));
            }
        }
    }

    for (name, m) in up.messages.iter().filter(|(n, _)| in_scope(n)) {
        let Some(o) = us.messages.get(name) else {
            problems.push(format!("message {name} is missing"));
            continue;
        };
        for f in &m.field {
            let Some(of) = o.field.iter().find(|x| x.number() == f.number()) else {
                problems.push(format!("field {name}.{} (number {}) is missing", f.name(), f.number()));
                continue;
            };
            let shape = |x: &prost_types::FieldDescriptorProto| {
                (x.name().to_owned(), x.r#type(), x.label(), x.type_name().to_owned(), x.proto3_optional())
            };
            if shape(f) != shape(of) {
                problems.push(format!(
                    "field {name} #{}: upstream (name, type, label, type_name, proto3_optional) = {:?}, ours = {:?}",
                    f.number(),
                    shape(f),
                    shape(of)
                ));
            }
        }
    }

    for (name, e) in up.enums.iter().filter(|(n, _)| in_scope(n)) {
        let Some(o) = us.enums.get(name) else {
            problems.push(format!("enum {name} is missing"));
            continue;
        };
        for v in &e.value {
            match o.value.iter().find(|x| x.name() == v.name()) {
                None => problems.push(format!("enum value {name}.{} is missing", v.name())),
                Some(ov) if ov.number() != v.number() => problems.push(format!(
                    "enum value {name}.{}: upstream {}, ours {}",
                    v.name(),
                    v.number(),
                    ov.number()
                )),
                Some(_) => {}
            }
        }
    }
    problems.sort();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn ours() -> FileDescriptorSet {
        FileDescriptorSet::decode(puppet_proto::pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn message_mut<'a>(set: &'a mut FileDescriptorSet, name: &str) -> &'a mut DescriptorProto {
        set.file.iter_mut().flat_map(|f| f.message_type.iter_mut()).find(|m| m.name() == name).unwrap()
    }

    #[test]
    fn identical_sets_are_compatible() {
        assert_eq!(compare(&ours(), &ours()), Vec::<String>::new());
    }

    #[test]
    fn a_changed_field_number_is_named() {
        let mut changed = ours();
        let f =
            message_mut(&mut changed, "ContactAliasRequest").field.iter_mut().find(|f| f.name() == "alias").unwrap();
        f.number = Some(9);
        let problems = compare(&ours(), &changed);
        assert_eq!(problems, vec!["field .wechaty.puppet.ContactAliasRequest.alias (number 3) is missing"]);
    }

    #[test]
    fn lost_presence_type_changes_streaming_and_enum_values_are_named() {
        let mut changed = ours();
        let f = message_mut(&mut changed, "RoomTopicRequest").field.iter_mut().find(|f| f.name() == "topic").unwrap();
        f.proto3_optional = None;
        let svc = changed.file.iter_mut().flat_map(|f| f.service.iter_mut()).find(|s| s.name() == "Puppet").unwrap();
        svc.method.iter_mut().find(|m| m.name() == "Event").unwrap().server_streaming = Some(false);
        let e = changed.file.iter_mut().flat_map(|f| f.enum_type.iter_mut()).find(|e| e.name() == "EventType").unwrap();
        e.value.iter_mut().find(|v| v.name() == "EVENT_TYPE_DIRTY").unwrap().number = Some(28);
        let problems = compare(&ours(), &changed).join("\n");
        assert!(problems.contains("RoomTopicRequest #3"), "{problems}");
        assert!(problems.contains("method .wechaty.Puppet/Event"), "{problems}");
        assert!(problems.contains("EVENT_TYPE_DIRTY: upstream 27, ours 28"), "{problems}");
    }

    #[test]
    fn gateway_options_are_stripped_and_the_rest_kept() {
        let text = r#"syntax = "proto3";
import "google/api/annotations.proto";
import "wechaty/puppet/base.proto";
option (grpc.gateway.protoc_gen_openapiv2.options.openapiv2_swagger) = {
  info: { title: "x}{" description: "a; b" }
};
option go_package = "x";
service S {
  rpc A (R) returns (R) {
    option (google.api.http) = {
      get: "/a/{id}" // a comment with } and ;
      additional_bindings { put: "/b" }
    };
  }
}
"#;
        let s = strip_gateway_options(text);
        assert!(!s.contains("google/api"));
        assert!(!s.contains("openapiv2"));
        assert!(!s.contains("additional_bindings"));
        assert!(s.contains("import \"wechaty/puppet/base.proto\";"));
        assert!(s.contains("option go_package = \"x\";"));
        assert!(s.contains("rpc A (R) returns (R) {"));
    }
}

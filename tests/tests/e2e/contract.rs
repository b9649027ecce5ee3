//! The wire-compatibility proof: upstream `wechaty-grpc@1.5.2` (installed from npm by scripts/test)
//! compiled next to our contract, compared item by item.

use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::FileDescriptorSet;
use prost_types::field_descriptor_proto::{Label, Type};
use puppet_tests::contract::{compare, strip_gateway_options};
use puppet_tests::installed;

fn copy_stripped(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_stripped(&path, &dest);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(dest, strip_gateway_options(&text)).unwrap();
        }
    }
}

fn compile(include: &Path, entry: &str, out: &Path) -> FileDescriptorSet {
    let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
    let wkt = protoc_bin_vendored::include_path().unwrap();
    let status = std::process::Command::new(protoc)
        .arg(format!("-I{}", include.display()))
        .arg(format!("-I{}", wkt.display()))
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(entry)
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed on {entry} in {}", include.display());
    FileDescriptorSet::decode(std::fs::read(out).unwrap().as_slice()).unwrap()
}

#[test]
fn our_contract_is_a_superset_of_wechaty_grpc_1_5_2() {
    let package = installed("WECHATY_GRPC_DIR", "the npm package wechaty-grpc@1.5.2");
    let version: serde_json::Value =
        serde_json::from_slice(&std::fs::read(package.join("package.json")).unwrap()).unwrap();
    assert_eq!(version["version"], "1.5.2", "WECHATY_GRPC_DIR must hold wechaty-grpc 1.5.2");
    let upstream_proto: PathBuf = package.join("dist/cjs/proto");
    assert!(upstream_proto.join("wechaty/puppet.proto").exists(), "no protos under {}", upstream_proto.display());

    let work = std::env::temp_dir().join(format!("puppet-contract-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("upstream")).unwrap();
    copy_stripped(&upstream_proto, &work.join("upstream"));
    let upstream = compile(&work.join("upstream"), "wechaty/puppet.proto", &work.join("upstream.bin"));
    let ours = compile(&puppet_tests::repo_root().join("proto"), "wechaty/puppet.proto", &work.join("ours.bin"));
    std::fs::remove_dir_all(&work).unwrap();

    // Guard against comparing nothing: the upstream contract has ~70 methods and ~150 messages.
    let methods: usize = upstream.file.iter().flat_map(|f| &f.service).map(|s| s.method.len()).sum();
    assert!(methods >= 60, "upstream has only {methods} methods: did the stripping lose the service?");

    let problems = compare(&upstream, &ours);
    assert!(problems.is_empty(), "our contract differs from wechaty-grpc 1.5.2:\n  {}", problems.join("\n  "));

    // And what the server embeds (for reflection) is what proto/ says.
    let embedded = FileDescriptorSet::decode(puppet_proto::pb::FILE_DESCRIPTOR_SET).unwrap();
    let drift = compare(&ours, &embedded);
    assert!(drift.is_empty(), "the embedded descriptor differs from proto/:\n  {}", drift.join("\n  "));
}

/// The fields of message `name` in `set`: (name, number, type, label).
fn fields_of(set: &FileDescriptorSet, name: &str) -> Vec<(String, i32, Type, Label)> {
    let message = set
        .file
        .iter()
        .filter(|f| f.package() == "wechaty.puppet")
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no message wechaty.puppet.{name}"));
    message.field.iter().map(|f| (f.name().to_owned(), f.number(), f.r#type(), f.label())).collect()
}

#[test]
fn the_event_messages_carry_juzis_resumable_stream_fields() {
    let modules = installed("PUPPET_UPSTREAM_NODE_MODULES", "the npm-upstream tree with @juzi/wechaty-grpc@1.0.100");
    let package = modules.join("@juzi/wechaty-grpc");
    let version: serde_json::Value =
        serde_json::from_slice(&std::fs::read(package.join("package.json")).unwrap()).unwrap();
    assert_eq!(version["version"], "1.0.100", "the Juzi contract must be @juzi/wechaty-grpc 1.0.100");
    let work = std::env::temp_dir().join(format!("puppet-contract-juzi-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("juzi")).unwrap();
    copy_stripped(&package.join("dist/cjs/proto"), &work.join("juzi"));
    let juzi = compile(&work.join("juzi"), "wechaty/puppet/event.proto", &work.join("juzi.bin"));
    let ours = compile(&puppet_tests::repo_root().join("proto"), "wechaty/puppet/event.proto", &work.join("ours.bin"));
    std::fs::remove_dir_all(&work).unwrap();
    for message in ["EventRequest", "EventResponse"] {
        let theirs = fields_of(&juzi, message);
        assert!(theirs.iter().any(|f| f.0 == "seq"), "Juzi's {message} has no seq: {theirs:?}");
        // Every field Juzi's clients send or read is ours too, same number, type and label.
        assert_eq!(fields_of(&ours, message), theirs, "{message}");
    }
}

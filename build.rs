//! Compiles `proto/` into Rust. A fresh machine has no `protoc`, so the vendored binary is used unless
//! `PROTOC` names one explicitly.
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/wechaty/puppet.proto",
    "proto/puppet_rs/v1/puppet_rs.proto",
    "proto/puppet_rs/v1/official_account.proto",
    "proto/puppet_rs/v1/admin.proto",
    "proto/puppet_rs/v1/ilink.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    if env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("puppet_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

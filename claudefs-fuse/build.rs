//! Builds the eBPF probes (`ebpf/probes`) with a nested nightly cargo and
//! copies the object into `OUT_DIR`, where `probes/mod.rs` embeds it with
//! `include_bytes_aligned!`. `CLAUDEFS_EBPF_OBJECT=<path>` embeds a
//! prebuilt object instead (no nightly needed).

use std::path::{Path, PathBuf};

#[path = "../ebpf/build_support.rs"]
mod build_support;

const OBJECT_ENV: &str = "CLAUDEFS_EBPF_OBJECT";

fn fail(msg: &str) -> ! {
    eprintln!("error: cannot build the claudefs-fuse eBPF probes: {msg}");
    std::process::exit(1);
}

fn main() {
    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    let out_dir = match std::env::var_os("OUT_DIR") {
        Some(d) => PathBuf::from(d),
        None => fail("OUT_DIR is not set (not run by cargo?)"),
    };
    let dest = out_dir.join("claudefs-ebpf.o");

    let object = if let Some(prebuilt) = std::env::var_os(OBJECT_ENV) {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        prebuilt
    } else {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let root = manifest.parent().unwrap_or(Path::new("..")).to_path_buf();
        for p in [
            "ebpf/probes/src",
            "ebpf/probes/Cargo.toml",
            "ebpf/common/src",
            "ebpf/common/Cargo.toml",
            "ebpf/build_support.rs",
            "Cargo.lock",
        ] {
            println!("cargo:rerun-if-changed={}", root.join(p).display());
        }
        match build_support::build(&root, true) {
            Ok(object) => object,
            Err(msg) => fail(&msg),
        }
    };
    if let Err(e) = std::fs::copy(&object, &dest) {
        fail(&format!(
            "copying {} to {}: {e}",
            object.display(),
            dest.display()
        ));
    }
}

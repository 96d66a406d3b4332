//! `cargo xtask build-ebpf`: builds the eBPF probes object with the same
//! nested nightly command `claudefs-fuse/build.rs` runs.

use std::path::{Path, PathBuf};

#[path = "../../ebpf/build_support.rs"]
mod build_support;

/// Builds `ebpf/probes` for the BPF target and returns the object's path
/// (`<workspace>/target/ebpf/bpfel-unknown-none/release/claudefs-ebpf`).
pub fn build_ebpf(workspace_root: &Path) -> anyhow::Result<PathBuf> {
    build_support::build(workspace_root, false).map_err(anyhow::Error::msg)
}

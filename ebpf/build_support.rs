//! Building the eBPF probes object with a nested nightly cargo. Shared (via
//! `#[path]`) by `claudefs-fuse/build.rs`, which embeds the object, and by
//! `xtask` (`cargo xtask build-ebpf`); std only, so both can use it.
//!
//! The command is
//! `cargo +nightly build -p claudefs-ebpf --release --target bpfel-unknown-none
//! -Z build-std=core --target-dir <workspace>/target/ebpf`, run with the
//! variables an outer cargo/clippy sets removed (they would point the
//! nested build at the outer toolchain or at clippy-driver).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The eBPF target.
pub const TARGET: &str = "bpfel-unknown-none";
/// The toolchain the probes build with.
pub const TOOLCHAIN: &str = "nightly";
/// The probes package.
pub const PACKAGE: &str = "claudefs-ebpf";

/// What to run to fix a missing toolchain piece.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (installs the nightly toolchain, rust-src \
     and bpf-linker), or set CLAUDEFS_EBPF_OBJECT=<path> to embed a prebuilt probes object";

/// Where the object ends up.
pub fn object_path(workspace_root: &Path) -> PathBuf {
    target_dir(workspace_root)
        .join(TARGET)
        .join("release")
        .join(PACKAGE)
}

/// The nested build's own target directory (a separate cargo lock).
pub fn target_dir(workspace_root: &Path) -> PathBuf {
    workspace_root.join("target").join("ebpf")
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// `PATH` with `$CARGO_HOME/bin` first (rustup proxies, bpf-linker).
fn search_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = cargo_home().map(|h| h.join("bin")).into_iter().collect();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn find_in_path(exe: &str) -> Option<PathBuf> {
    std::env::split_paths(&search_path())
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

/// Variables of an outer cargo/rustc/clippy that must not leak into the
/// nested nightly build.
fn is_inherited_build_var(key: &str) -> bool {
    if key == "CARGO_HOME" {
        return false;
    }
    key == "CARGO"
        || key.starts_with("CARGO_")
        || key.starts_with("__CARGO")
        || key.starts_with("RUSTC")
        || key.starts_with("RUSTDOC")
        || key == "RUSTFLAGS"
        || key == "RUSTUP_TOOLCHAIN"
        || matches!(
            key,
            "TARGET" | "HOST" | "OUT_DIR" | "OPT_LEVEL" | "PROFILE" | "DEBUG" | "NUM_JOBS"
        )
}

/// A command for the nightly toolchain with a clean environment.
fn nightly(program: &str) -> Command {
    let cargo_proxy = find_in_path("cargo");
    let mut cmd = match (program, cargo_proxy) {
        ("cargo", Some(proxy)) => Command::new(proxy),
        _ => Command::new(program),
    };
    cmd.arg(format!("+{TOOLCHAIN}"));
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str() {
            if is_inherited_build_var(k) {
                cmd.env_remove(k);
            }
        }
    }
    cmd.env("PATH", search_path());
    cmd
}

/// Checks that nightly, its rust-src and bpf-linker are installed.
pub fn check_toolchain() -> Result<(), String> {
    let out = nightly("rustc")
        .args(["--print", "sysroot"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `rustc +{TOOLCHAIN}` ({e}); {SETUP_HINT}"))?;
    if !out.status.success() {
        return Err(format!(
            "the {TOOLCHAIN} toolchain is not installed ({}); {SETUP_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core.is_dir() {
        return Err(format!(
            "the rust-src component of {TOOLCHAIN} is missing ({} not found); {SETUP_HINT}",
            core.display()
        ));
    }
    if find_in_path("bpf-linker").is_none() {
        return Err(format!("bpf-linker is not installed; {SETUP_HINT}"));
    }
    Ok(())
}

/// The nested build command.
pub fn build_command(workspace_root: &Path) -> Command {
    // The architecture the object will run on: the build script's target
    // when cross-compiling, else this machine's.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")
        .unwrap_or_else(|_| std::env::consts::ARCH.to_string());
    let mut cmd = nightly("cargo");
    cmd.current_dir(workspace_root)
        .args(["build", "-p", PACKAGE, "--release", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir(workspace_root))
        // BTF for readable verifier logs; bpf_target_arch for aya-ebpf.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2".to_string(),
                "-Clink-arg=--btf".to_string(),
            ]
            .join("\x1f"),
        );
    cmd
}

/// Checks the toolchain and builds; `capture` keeps cargo's output (for a
/// build script) instead of passing it through (for xtask). Returns the
/// object's path.
pub fn build(workspace_root: &Path, capture: bool) -> Result<PathBuf, String> {
    check_toolchain()?;
    let mut cmd = build_command(workspace_root);
    let out: Output = if capture {
        cmd.stdin(Stdio::null()).output()
    } else {
        cmd.status().map(|status| Output {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }
    .map_err(|e| format!("cannot run {cmd:?}: {e}; {SETUP_HINT}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the eBPF probes failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let object = object_path(workspace_root);
    if !object.is_file() {
        return Err(format!(
            "the eBPF build did not produce {}",
            object.display()
        ));
    }
    Ok(object)
}

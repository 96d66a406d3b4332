//! `cargo xtask setup`: installs, idempotently and quietly, what this project
//! needs on a fresh Debian machine: FUSE tools and tracers from apt, the
//! nightly toolchain's rust-src and bpf-linker (linked against the nightly's
//! own LLVM) for building the eBPF probes.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Debian packages the tests, demo and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "fuse3",      // fusermount3, /dev/fuse helpers
    "bindfs",     // a third-party FUSE file system to observe and to fail paths with
    "bpftrace",   // independent tracer for cross-checks and the probe benchmark
    "util-linux", // flock(1)
    "python3",
    "prometheus", // prometheus + promtool: exporter tests and `cargo xtask dashboards check`
    "systemd",    // systemd-analyze: the fleet test verifies the units in deploy/systemd
];

/// The nightly toolchain that builds the probes (`-Z build-std=core`).
pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !cmd::succeeds(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                || !installed_ok(p)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null()),
    )
}

fn installed_ok(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s == "install ok installed")
        .unwrap_or(false)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .with_context(|| {
            format!("the `{NIGHTLY}` toolchain is required to build the eBPF probes (rustup toolchain install {NIGHTLY})")
        })?;
    Ok(PathBuf::from(sysroot))
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the {NIGHTLY} toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn bpf_linker() -> Result<()> {
    // bpf-linker links the nightly's libLLVM dynamically; rustup puts the
    // toolchain's lib dir on the library path when it runs it.
    if cmd::succeeds(Command::new("rustup").args(["run", NIGHTLY, "bpf-linker", "--version"])) {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so"))
        });
    let Some(llvm) = llvm else {
        bail!(
            "no libLLVM in {}: cannot build bpf-linker against the nightly's LLVM",
            lib.display()
        );
    };
    let major =
        llvm_major(&llvm).with_context(|| format!("cannot tell the LLVM version of {llvm}"))?;
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        });
    let prefix = home.join("claudefs-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.join(&llvm), &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about a minute)"
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "--quiet",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// `libLLVM.so.22.1-rust-...` or `libLLVM-22-rust-....so` -> 22.
fn llvm_major(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_from_library_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-21-rust-1.96.0-nightly.so"), Some(21));
        assert_eq!(llvm_major("libfoo.so"), None);
    }
}

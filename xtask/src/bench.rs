//! `cargo xtask bench`: builds the release binaries and runs every benchmark
//! binary of the e2e crate (`tests/src/bin/bench_*.rs`), one after the
//! other so they do not disturb each other. Each prints its own table of
//! medians and ratios against the reference measured in the same run.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cmd, setup, workspace_root};

pub fn run(only: Option<&str>) -> Result<()> {
    setup::run()?;
    let root = workspace_root();
    cmd::cargo(&root, &["build", "--release", "--bins"])?;
    let bin_dir = root.join("tests/src/bin");
    let mut names: Vec<String> = std::fs::read_dir(&bin_dir)
        .with_context(|| format!("cannot read {}", bin_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs")
                .filter(|n| n.starts_with("bench_"))
                .map(str::to_string)
        })
        .filter(|n| only.is_none_or(|o| n == o || n.trim_start_matches("bench_") == o))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no benchmark matches {only:?} in {}", bin_dir.display());
    }
    let release = root.join("target/release");
    for name in names {
        println!("\n=== {name} ===");
        cmd::run(
            Command::new(release.join(&name))
                .env("CLAUDEFS_FUSE_BIN", release.join("claudefs-fuse"))
                .current_dir(&root),
        )?;
    }
    Ok(())
}

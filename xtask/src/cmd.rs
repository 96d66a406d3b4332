//! Running external commands with clear errors.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `cargo <args>` in `dir`, streaming its output; fails on a non-zero exit.
pub fn cargo(dir: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut c = Command::new(cargo);
    c.args(args).current_dir(dir);
    run(&mut c)
}

/// Runs a command, streaming its output; fails on a non-zero exit.
pub fn run(c: &mut Command) -> Result<()> {
    let shown = format!("{c:?}");
    let status = c
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs a command quietly; true if it exited 0.
pub fn succeeds(c: &mut Command) -> bool {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command and returns its stdout (trimmed); fails on a non-zero exit.
pub fn output(c: &mut Command) -> Result<String> {
    let shown = format!("{c:?}");
    let out = c
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cargo test <args>` in `dir`, echoing its output, and returns the
/// passed and failed counts summed over its `test result:` lines; fails on
/// a non-zero exit.
pub fn cargo_test(dir: &Path, args: &[&str]) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader, Write};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut child = Command::new(cargo)
        .arg("test")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            let _ = writeln!(stdout, "{line}");
            if let Some((p, f)) = parse_test_result(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test failed with {status} ({passed} passed, {failed} failed)");
    }
    Ok((passed, failed))
}

/// `test result: ok. 12 passed; 0 failed; ...` -> (12, 0).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';').map(str::trim).find_map(|part| {
            let part = part.rsplit(". ").next().unwrap_or(part);
            part.strip_suffix(word)?.trim().parse().ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn reads_cargo_test_result_lines() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 246 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.79s"
            ),
            Some((246, 0))
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 3 passed; 2 failed; 0 ignored"),
            Some((3, 2))
        );
        assert_eq!(parse_test_result("running 2 tests"), None);
    }
}

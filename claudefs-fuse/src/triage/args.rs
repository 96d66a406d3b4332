//! Command-line arguments of `claudefs-fuse triage`.

use std::path::PathBuf;

/// How the report is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for a terminal.
    #[default]
    Table,
    /// One JSON document (schema in the README, "Triage JSON schema").
    Json,
}

/// `claudefs-fuse triage [--duration SECS] [--mount PATH] [--format table|json]`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TriageArgs {
    /// Seconds to collect before reporting (Ctrl-C ends early and still
    /// reports).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        allow_negative_numbers = true,
        value_parser = parse_duration_secs
    )]
    pub duration: u64,

    /// Report only the FUSE mount that holds PATH (flock calls too).
    #[arg(long, value_name = "PATH")]
    pub mount: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

/// The longest collection `--duration` accepts: one week.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;

/// Parses `--duration`: whole seconds in `1..=`[`MAX_DURATION_SECS`].
fn parse_duration_secs(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(secs @ 1..=MAX_DURATION_SECS) => Ok(secs),
        _ => Err(format!(
            "expected whole seconds in 1..={MAX_DURATION_SECS} (a week)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TriageArgs,
    }

    fn parse(argv: &[&str]) -> Result<TriageArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("triage").chain(argv.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.duration, 10);
        assert_eq!(args.mount, None);
        assert_eq!(args.format, OutputFormat::Table);
    }

    #[test]
    fn all_flags() {
        let args = parse(&["--duration", "3", "--mount", "/mnt/x", "--format", "json"]).unwrap();
        assert_eq!(args.duration, 3);
        assert_eq!(args.mount, Some(PathBuf::from("/mnt/x")));
        assert_eq!(args.format, OutputFormat::Json);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "0",
            "-1",
            "garbage",
            "1.5",
            "",
            "604801",
            "99999999999999999999",
        ] {
            let err = parse(&["--duration", bad]).unwrap_err().to_string();
            assert!(
                err.contains("--duration") && err.contains("whole seconds"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(parse(&["--duration", "604800"]).unwrap().duration, 604_800);
        assert!(parse(&["--format", "yaml"]).is_err());
    }
}

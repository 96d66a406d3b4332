//! claudefs-fuse: the FUSE client of ClaudeFS and its eBPF-assisted
//! observability add-on.
//!
//! The five Phase-6 modules (`crash_recovery`, `flock`, `idmap`,
//! `multipath`, `otel_trace`) are dependency-free building blocks; `daemon`
//! makes them a mountable file system over `session` (the daemon's own
//! FUSE protocol and transports), `probes` loads the kernel side and
//! `triage` turns what it records into a report.

pub mod cli;
pub mod clock;
pub mod crash_recovery;
pub mod daemon;
pub mod error;
pub mod exporter;
pub mod flock;
pub mod idmap;
pub mod inode;
pub mod multipath;
pub mod otel_trace;
pub mod probes;
pub mod session;
pub mod sharded;
pub mod tracing_client;
pub mod triage;

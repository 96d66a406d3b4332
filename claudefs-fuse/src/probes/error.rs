//! Errors of the probe loader. Each variant says what went wrong and what
//! the user can do about it; the verifier log is kept verbatim.

use std::path::PathBuf;

/// Why the probes could not be loaded or read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The process lacks the privileges to load tracing BPF programs.
    #[error(
        "loading eBPF probes needs root, or the CAP_BPF and CAP_PERFMON capabilities \
         (missing: {missing}); run the command as root (sudo)"
    )]
    Privileges {
        /// Comma-separated names of the missing capabilities.
        missing: String,
    },

    /// tracefs is not mounted and could not be mounted.
    #[error(
        "tracefs is not mounted and mounting it at {path} failed: {source}; mount it by hand \
         (`mount -t tracefs tracefs /sys/kernel/tracing`) or enable CONFIG_TRACING in the kernel"
    )]
    TracefsUnavailable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tracepoint format file could not be read or parsed.
    #[error("cannot use tracepoint {category}/{name}: {reason}")]
    TracepointFormat {
        category: String,
        name: String,
        reason: String,
    },

    /// None of the hooks the probes need could be attached.
    #[error(
        "none of the probes could be attached on this kernel: {reasons}; the FUSE \
         tracepoints need Linux >= 6.12"
    )]
    NoTracepoints { reasons: String },

    /// An event ring size the kernel cannot make.
    #[error(
        "an event ring of {bytes} bytes was asked for; its size must be a power of two and \
         a multiple of the page size ({page_size} bytes), e.g. {suggested}"
    )]
    EventRingSize {
        bytes: u32,
        page_size: u32,
        /// The nearest size that works.
        suggested: u32,
    },

    /// The embedded BPF object could not be parsed or its maps created.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),

    /// The kernel verifier rejected a program.
    #[error(
        "the kernel verifier rejected program {program} ({source}); this is a bug in \
         claudefs-fuse or an unsupported kernel, please report it with this log:\n{verifier_log}"
    )]
    Verifier {
        program: String,
        #[source]
        source: std::io::Error,
        verifier_log: String,
    },

    /// Loading or attaching a program failed for another reason.
    #[error("cannot load or attach program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },

    /// A program or map the loader expects is missing from the object.
    #[error("the embedded eBPF object has no {what} named {name} (build mismatch?)")]
    Missing { what: &'static str, name: String },

    /// A map operation failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

impl ProbeError {
    /// Turns a program load/attach error into [`ProbeError::Verifier`] when
    /// it carries a verifier log, [`ProbeError::Privileges`] on EPERM, and
    /// [`ProbeError::Program`] otherwise.
    pub(crate) fn from_program(program: &str, err: aya::programs::ProgramError) -> ProbeError {
        match err {
            aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                if io_error.raw_os_error() == Some(libc::EPERM)
                    && verifier_log.to_string().is_empty()
                {
                    return ProbeError::Privileges {
                        missing: "CAP_BPF, CAP_PERFMON (the kernel said EPERM)".to_string(),
                    };
                }
                ProbeError::Verifier {
                    program: program.to_string(),
                    source: io_error,
                    verifier_log: verifier_log.to_string(),
                }
            }
            other => ProbeError::Program {
                program: program.to_string(),
                source: other,
            },
        }
    }

    /// Turns an object load error into [`ProbeError::Privileges`] when the
    /// kernel refused map creation with EPERM.
    pub(crate) fn from_object(err: aya::EbpfError) -> ProbeError {
        let eperm = match &err {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) => {
                io_error.raw_os_error() == Some(libc::EPERM)
            }
            _ => false,
        };
        if eperm {
            ProbeError::Privileges {
                missing: "CAP_BPF (the kernel refused to create a map with EPERM)".to_string(),
            }
        } else {
            ProbeError::Object(err)
        }
    }
}

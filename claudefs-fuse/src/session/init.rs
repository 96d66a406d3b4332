//! INIT negotiation: what the daemon asks of the kernel ([`InitConfig`],
//! every capability named), what the two agreed ([`InitState`]), and the
//! reply that says so.
//!
//! `InitState` is serializable: a session adopting an initialised
//! connection (`Session::adopt`) is built from it, since the kernel sends
//! INIT once per connection.

use serde::{Deserialize, Serialize};

use super::abi::{self, init_flags as f};

/// The capabilities the daemon uses, each asked for only if wanted here
/// and granted only if the kernel offers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// Largest WRITE payload (bytes); also sets `max_pages`.
    pub max_write: u32,
    /// Background requests (readahead, async direct I/O) in flight at most.
    pub max_background: u16,
    /// Background requests at which the kernel reports congestion.
    pub congestion_threshold: u16,
    /// flock(2) served by the daemon (FLOCK_LOCKS).
    pub flock: bool,
    /// Lookups and readdirs of one directory in parallel (PARALLEL_DIROPS).
    pub parallel_dirops: bool,
    /// READDIRPLUS, adaptively (DO_READDIRPLUS | READDIRPLUS_AUTO).
    pub readdirplus: bool,
    /// The daemon clears suid/sgid on write, chown and truncate as the VFS
    /// does (HANDLE_KILLPRIV_V2), sparing the kernel a SETATTR.
    pub killpriv_v2: bool,
    /// The kernel caches READLINK answers (CACHE_SYMLINKS).
    pub cache_symlinks: bool,
    /// Kernel passthrough of open files (PASSTHROUGH, stack depth 2).
    pub passthrough: bool,
    /// Requests over io_uring (OVER_IO_URING).
    pub io_uring: bool,
    /// Abort the connection when a request waits longer than this many
    /// seconds (REQUEST_TIMEOUT, Linux 6.15). None: never. Note that a
    /// blocking flock waiting longer would abort the connection too.
    pub request_timeout: Option<u16>,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            max_write: 1 << 20,
            max_background: 64,
            congestion_threshold: 48,
            flock: true,
            parallel_dirops: true,
            readdirplus: true,
            killpriv_v2: true,
            cache_symlinks: true,
            passthrough: false,
            io_uring: false,
            request_timeout: None,
        }
    }
}

impl InitConfig {
    /// The INIT flags asked for.
    pub fn wanted(&self) -> u64 {
        let mut w = f::ASYNC_READ | f::BIG_WRITES | f::MAX_PAGES | f::INIT_EXT;
        for (on, flag) in [
            (self.flock, f::FLOCK_LOCKS),
            (self.parallel_dirops, f::PARALLEL_DIROPS),
            (self.readdirplus, f::DO_READDIRPLUS | f::READDIRPLUS_AUTO),
            (self.killpriv_v2, f::HANDLE_KILLPRIV_V2),
            (self.cache_symlinks, f::CACHE_SYMLINKS),
            (self.passthrough, f::PASSTHROUGH),
            (self.io_uring, f::OVER_IO_URING),
            (self.request_timeout.is_some(), f::REQUEST_TIMEOUT),
        ] {
            if on {
                w |= flag;
            }
        }
        w
    }
}

/// What the kernel and the daemon agreed at INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitState {
    pub major: u32,
    pub minor: u32,
    /// The kernel's offer (`flags | flags2 << 32`).
    pub offered: u64,
    /// The flags in force (offered and wanted).
    pub flags: u64,
    pub max_readahead: u32,
    pub max_write: u32,
    pub max_pages: u16,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub time_gran: u32,
    pub max_stack_depth: u32,
    pub request_timeout: u16,
}

impl InitState {
    /// Whether `flag` (an [`abi::init_flags`] bit) is in force.
    pub fn has(&self, flag: u64) -> bool {
        self.flags & flag != 0
    }

    /// The INIT reply stating this agreement.
    pub fn reply(&self) -> abi::InitOut {
        abi::InitOut {
            major: self.major,
            minor: self.minor,
            max_readahead: self.max_readahead,
            flags: self.flags as u32,
            max_background: self.max_background,
            congestion_threshold: self.congestion_threshold,
            max_write: self.max_write,
            time_gran: self.time_gran,
            max_pages: self.max_pages,
            map_alignment: 0,
            flags2: (self.flags >> 32) as u32,
            max_stack_depth: self.max_stack_depth,
            request_timeout: self.request_timeout,
            unused: [0; 11],
        }
    }

    /// The read buffer a request needs at most: the largest write and
    /// room for its headers.
    pub fn buffer_size(&self) -> usize {
        (self.max_write as usize + 4096).max(abi::MIN_READ_BUFFER)
    }
}

/// Why INIT failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    #[error("kernel speaks FUSE {major}.{minor}; 7.31 or newer is needed")]
    Unsupported { major: u32, minor: u32 },
}

/// Agrees on the connection given the kernel's INIT and what `cfg` wants.
pub fn negotiate(kernel: &abi::InitIn, cfg: &InitConfig) -> Result<InitState, InitError> {
    if kernel.major != abi::KERNEL_VERSION || kernel.minor < 31 {
        return Err(InitError::Unsupported {
            major: kernel.major,
            minor: kernel.minor,
        });
    }
    let mut offered = u64::from(kernel.flags);
    if offered & f::INIT_EXT != 0 {
        offered |= u64::from(kernel.flags2) << 32;
    }
    let flags = offered & cfg.wanted();
    let page = 4096u32;
    let max_pages = (cfg.max_write / page).clamp(1, u32::from(u16::MAX)) as u16;
    Ok(InitState {
        major: abi::KERNEL_VERSION,
        minor: kernel.minor.min(abi::KERNEL_MINOR_VERSION),
        offered,
        flags,
        max_readahead: kernel.max_readahead,
        max_write: cfg.max_write,
        max_pages,
        max_background: cfg.max_background,
        congestion_threshold: cfg.congestion_threshold,
        time_gran: 1,
        max_stack_depth: if flags & f::PASSTHROUGH != 0 { 2 } else { 0 },
        request_timeout: if flags & f::REQUEST_TIMEOUT != 0 {
            cfg.request_timeout.unwrap_or(0)
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(flags: u64) -> abi::InitIn {
        abi::InitIn {
            major: 7,
            minor: 44,
            max_readahead: 128 << 10,
            flags: flags as u32 | f::INIT_EXT as u32,
            flags2: (flags >> 32) as u32,
            unused: [0; 11],
        }
    }

    #[test]
    fn only_capabilities_both_sides_have_are_in_force() {
        let cfg = InitConfig {
            passthrough: true,
            ..InitConfig::default()
        };
        // The kernel offers flock and passthrough but not readdirplus.
        let st = negotiate(
            &offer(f::FLOCK_LOCKS | f::PASSTHROUGH | f::POSIX_LOCKS),
            &cfg,
        )
        .unwrap();
        assert!(st.has(f::FLOCK_LOCKS) && st.has(f::PASSTHROUGH));
        assert!(!st.has(f::DO_READDIRPLUS) && !st.has(f::POSIX_LOCKS));
        assert_eq!(st.max_stack_depth, 2);
        let out = st.reply();
        assert_eq!(u64::from(out.flags2) << 32, f::PASSTHROUGH);
        assert_eq!(out.minor, 44);
        assert_eq!(out.max_pages, 256);
        // Not wanted: not in force, even when offered.
        let st = negotiate(&offer(f::PASSTHROUGH), &InitConfig::default()).unwrap();
        assert!(!st.has(f::PASSTHROUGH));
        assert_eq!(st.max_stack_depth, 0);
    }

    #[test]
    fn flags2_counts_only_with_init_ext() {
        let mut k = offer(f::OVER_IO_URING);
        k.flags &= !(f::INIT_EXT as u32);
        let cfg = InitConfig {
            io_uring: true,
            ..InitConfig::default()
        };
        assert!(!negotiate(&k, &cfg).unwrap().has(f::OVER_IO_URING));
        assert!(negotiate(&offer(f::OVER_IO_URING), &cfg)
            .unwrap()
            .has(f::OVER_IO_URING));
    }

    #[test]
    fn an_old_or_foreign_protocol_is_refused() {
        let mut k = offer(0);
        k.minor = 20;
        assert!(negotiate(&k, &InitConfig::default()).is_err());
        k.major = 8;
        assert!(negotiate(&k, &InitConfig::default()).is_err());
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let st = negotiate(
            &offer(f::FLOCK_LOCKS | f::HAS_RESEND),
            &InitConfig::default(),
        )
        .unwrap();
        let text = serde_json::to_string(&st).unwrap();
        let back: InitState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.reply(), st.reply());
    }
}

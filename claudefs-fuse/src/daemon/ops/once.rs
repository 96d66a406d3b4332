//! Non-idempotent requests applied once across a server restart.
//!
//! A request that makes, removes or renames a name (create, mknod, mkdir,
//! symlink, link, unlink, rmdir, rename) is journaled before it is applied
//! ([`Record::Intent`], under the kernel's `unique`) and after
//! ([`Record::Done`]). When a server dies with such a request read and not
//! answered, the kernel resends it to the next server with
//! [`abi::UNIQUE_RESEND`] set (FUSE_NOTIFY_RESEND); that server finds the
//! intent in the journal it carried on and, if the request was applied
//! (its `done` record, or without one its effect seen on storage: the name
//! made, removed, moved), answers as the first application did instead of
//! applying it again (an `O_EXCL` create would fail `EEXIST`, an unlink
//! `ENOENT`). An exchange leaves no effect to see: one in flight without a
//! `done` record is answered `EIO`, not repeated.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{Core, Served};
use crate::daemon::journal::{IntentOp, Record};
use crate::daemon::router::Retry;
use crate::daemon::storage::SysResult;
use crate::session::abi;

/// The test hook: `CLAUDEFS_FUSE_TEST_CRASH_AFTER=<op>` (`make`, `remove`,
/// `rename`) makes the first server of a mount abort right after applying
/// such a request, before its `done` record and its answer: what the
/// exactly-once tests kill it with.
pub const CRASH_AFTER_ENV: &str = "CLAUDEFS_FUSE_TEST_CRASH_AFTER";

fn op_name(op: IntentOp) -> &'static str {
    match op {
        IntentOp::Make => "make",
        IntentOp::Remove => "remove",
        IntentOp::Rename => "rename",
        IntentOp::Exchange => "exchange",
    }
}

impl Core {
    /// Applies a non-idempotent request once (see the module doc):
    /// `apply` does it, `again` answers as it did when it was applied
    /// before a restart.
    pub(in crate::daemon) fn once<T>(
        &self,
        cx: &Served,
        op: IntentOp,
        path: &Path,
        to: Option<&Path>,
        apply: impl FnOnce() -> SysResult<T>,
        again: impl FnOnce() -> SysResult<T>,
    ) -> SysResult<T> {
        let Some(j) = &self.journal else {
            return apply();
        };
        if cx.unique() == 0 {
            return apply();
        }
        let u = cx.unique() & !abi::UNIQUE_RESEND;
        if cx.unique() & abi::UNIQUE_RESEND != 0 {
            if let Some(i) = j.intent(u) {
                let applied = match i.done {
                    Some(err) => err == 0,
                    None if op == IntentOp::Exchange => {
                        tracing::warn!(
                            unique = u,
                            path = %path.display(),
                            "an exchange in flight when the last server stopped: not repeated (EIO)"
                        );
                        return Err(libc::EIO);
                    }
                    None => self.applied(op, path, to),
                };
                if applied {
                    self.deduplicated.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        unique = u,
                        op = op_name(op),
                        path = %path.display(),
                        "resent request was applied before the restart: answered, not repeated"
                    );
                    return again();
                }
            }
        }
        j.record(Record::Intent {
            u,
            op,
            path: path.to_string_lossy().into_owned(),
            to: to.map(|t| t.to_string_lossy().into_owned()),
        });
        let r = apply();
        if self.crash_after.as_deref() == Some(op_name(op)) {
            tracing::error!("{CRASH_AFTER_ENV}: aborting after applying {}", op_name(op));
            std::process::abort();
        }
        j.record(Record::Done {
            u,
            err: r.as_ref().err().copied().unwrap_or(0),
        });
        r
    }

    /// Whether the effect of `op` is on storage now.
    fn applied(&self, op: IntentOp, path: &Path, to: Option<&Path>) -> bool {
        let exists = |p: &Path| {
            self.router
                .run(Retry::Idempotent, |r| r.stat(p))
                .result
                .is_ok()
        };
        match op {
            IntentOp::Make => exists(path),
            IntentOp::Remove => !exists(path),
            IntentOp::Rename => !exists(path) && to.is_some_and(exists),
            IntentOp::Exchange => false,
        }
    }

    /// The entry of `rel` (a name made before a restart).
    pub(in crate::daemon) fn entry_of(
        &self,
        cx: &Served,
        rel: &Path,
    ) -> SysResult<super::FileAttr> {
        cx.note(
            self.router
                .run(Retry::Idempotent, |r| self.entry_at(r, rel)),
        )
    }
}

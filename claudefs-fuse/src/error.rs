//! The crate's error type, [`FuseError`], and the errno each variant
//! answers the kernel with.
//!
//! Every fallible operation of the client returns [`Result`]; the FUSE
//! boundary turns an error into a reply with [`FuseError::to_errno`].

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, FuseError>;

/// What went wrong, in terms the FUSE boundary can answer with an errno.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// An I/O error from the operating system or a transport.
    #[error("IO error: {0}")]
    Io(#[from] std::io::Error),
    /// The named object does not exist.
    #[error("Not found: {0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    /// An argument, or the state an operation was called in, is invalid.
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    /// The object to create exists already.
    #[error("Already exists: {0}")]
    AlreadyExists(String),
    /// The resource is in use.
    #[error("Resource busy: {0}")]
    ResourceBusy(String),
    /// The operation is not supported.
    #[error("Not supported: {0}")]
    NotSupported(String),
}

impl FuseError {
    /// The positive errno to reply to the kernel with.
    ///
    /// An [`FuseError::Io`] carries its OS error code when it has one and
    /// answers `EIO` otherwise. The match has no catch-all arm, so a new
    /// variant has to choose its errno.
    pub fn to_errno(&self) -> i32 {
        match self {
            FuseError::Io(err) => match err.raw_os_error() {
                Some(code) if code > 0 => code,
                _ => libc::EIO,
            },
            FuseError::NotFound(_) => libc::ENOENT,
            FuseError::PermissionDenied(_) => libc::EACCES,
            FuseError::InvalidArgument(_) => libc::EINVAL,
            FuseError::AlreadyExists(_) => libc::EEXIST,
            FuseError::ResourceBusy(_) => libc::EBUSY,
            FuseError::NotSupported(_) => libc::ENOTSUP,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_variants_map_to_their_errno() {
        assert_eq!(FuseError::NotFound("x".into()).to_errno(), libc::ENOENT);
        assert_eq!(
            FuseError::PermissionDenied("x".into()).to_errno(),
            libc::EACCES
        );
        assert_eq!(
            FuseError::InvalidArgument("x".into()).to_errno(),
            libc::EINVAL
        );
        assert_eq!(
            FuseError::AlreadyExists("x".into()).to_errno(),
            libc::EEXIST
        );
        assert_eq!(FuseError::ResourceBusy("x".into()).to_errno(), libc::EBUSY);
        assert_eq!(
            FuseError::NotSupported("x".into()).to_errno(),
            libc::ENOTSUP
        );
    }

    #[test]
    fn io_error_keeps_its_os_code() {
        let err = FuseError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(err.to_errno(), libc::ENOSPC);
    }

    #[test]
    fn io_error_without_os_code_is_eio() {
        let err = FuseError::from(std::io::Error::other("transport closed"));
        assert_eq!(err.to_errno(), libc::EIO);
    }

    #[test]
    fn display_names_the_kind_and_detail() {
        let err = FuseError::NotFound("inode 7".into());
        assert_eq!(err.to_string(), "Not found: inode 7");
        let err = FuseError::from(std::io::Error::other("boom"));
        assert_eq!(err.to_string(), "IO error: boom");
    }

    #[test]
    fn question_mark_converts_io_errors() {
        fn fails() -> Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::EROFS))?;
            Ok(())
        }
        assert_eq!(fails().unwrap_err().to_errno(), libc::EROFS);
    }
}

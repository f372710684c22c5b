//! `FsError`, the error of filesystem operations, shared by the layers
//! between the store and the FUSE adapter (catalog, read, write, fs), and
//! its one mapping to errno.

use crate::store::StoreError;

/// Why a filesystem operation failed. Every FUSE reply error comes from
/// [`FsError::errno`], so the mapping to errno lives in exactly one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only file system")]
    ReadOnly,
    #[error("unknown file handle")]
    BadHandle,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file exists")]
    Exists,
    /// Refused by a mount option (`--no-delete`, `--no-overwrite`).
    #[error("not permitted: {0}")]
    NotPermitted(&'static str),
    /// The file is being written through this mount.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// An operation S3 objects cannot support (see docs/SEMANTICS.md).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The local spool of an upload failed.
    #[error("upload spool: {0}")]
    Spool(String),
    /// The spool (its budget, or its disk) is full.
    #[error("no space left in the upload spool")]
    NoSpace,
    /// A change beyond what the mount allows for a file this large.
    #[error("file too large: {0}")]
    TooBig(&'static str),
    /// A name longer than a file name or an S3 key may be.
    #[error("file name too long")]
    NameTooLong,
    /// Work another task was to do for this request was given up; the
    /// caller should do it itself.
    #[error("work abandoned by another task")]
    Abandoned,
    /// A listing could not be written to the on-disk catalog (disk full, say).
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{key}: {source}")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
}

impl FsError {
    /// Whether the name or object is gone, whichever layer found it so.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::Store {
                    source: StoreError::NotFound,
                    ..
                }
        )
    }

    pub fn store(key: &str, source: StoreError) -> Self {
        FsError::Store {
            key: key.to_owned(),
            source,
        }
    }

    /// A failed spool read or write: ENOSPC when the disk is full, else an
    /// I/O error naming what failed.
    pub fn from_spool_io(what: &str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FsError::NoSpace,
            _ => FsError::Spool(format!("{what}: {e}")),
        }
    }

    pub fn errno(&self) -> libc::c_int {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Exists => libc::EEXIST,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Spool(_) | FsError::Catalog(_) => libc::EIO,
            FsError::NoSpace => libc::ENOSPC,
            FsError::TooBig(_) => libc::EFBIG,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Abandoned => libc::EAGAIN,
            FsError::Store { source, .. } => match source {
                StoreError::NotFound | StoreError::NoSuchBucket => libc::ENOENT,
                StoreError::AccessDenied(_) => libc::EACCES,
                // A changed object, a broken connection or a throttled request
                // all surface as an I/O error: the caller cannot fix them by
                // retrying differently, and EIO is what tools report clearly.
                _ => libc::EIO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_errno() {
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
        assert_eq!(FsError::NotADirectory.errno(), libc::ENOTDIR);
        assert_eq!(FsError::NotEmpty.errno(), libc::ENOTEMPTY);
        assert_eq!(FsError::NotPermitted("x").errno(), libc::EPERM);
        assert_eq!(FsError::Unsupported("x").errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::NoSpace.errno(), libc::ENOSPC);
        assert_eq!(FsError::TooBig("x").errno(), libc::EFBIG);
        assert_eq!(FsError::NameTooLong.errno(), libc::ENAMETOOLONG);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::from_spool_io("write", full).errno(), libc::ENOSPC);
        assert_eq!(
            FsError::store("k", StoreError::PreconditionFailed).errno(),
            libc::EIO
        );
        assert_eq!(
            FsError::store("k", StoreError::NotFound).errno(),
            libc::ENOENT
        );
        assert_eq!(
            FsError::store("k", StoreError::AccessDenied("AccessDenied".into())).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::store("k", StoreError::Timeout("t".into())).errno(),
            libc::EIO
        );
    }
}

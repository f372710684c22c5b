//! `PendingAttrs`: the POSIX attributes the next commit of a file open for
//! writing stores with its data. Set when the file is created or opened,
//! changed by chmod, chown and utimens while it is open; the upload reads
//! them when it starts sending (one PUT, or CreateMultipartUpload).

use std::time::SystemTime;

use parking_lot::Mutex;

use crate::store::PosixMeta;

/// `None` for the attributes: the mount keeps no POSIX attributes
/// (`--posix-metadata off`), and uploads carry none.
#[derive(Debug, Default)]
pub struct PendingAttrs(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    posix: Option<PosixMeta>,
    /// Changed since the last commit started: a commit must still store it.
    unstored: bool,
    /// The ETag of the version the file was opened at or last stored as.
    version: Option<String>,
}

impl PendingAttrs {
    /// Attributes for a file whose commits carry `posix` (`None`: carry
    /// nothing). An `mtime` of `None` means "when it is stored".
    pub fn new(posix: Option<PosixMeta>) -> Self {
        PendingAttrs(Mutex::new(Inner {
            posix,
            unstored: false,
            version: None,
        }))
    }

    /// What a commit starting now carries: the attributes, stamped with
    /// the time of the commit unless a time was set.
    pub fn for_commit(&self) -> PosixMeta {
        let mut inner = self.0.lock();
        inner.unstored = false;
        match inner.posix {
            None => PosixMeta::NONE,
            Some(p) => PosixMeta {
                mtime: p.mtime.or_else(|| Some(SystemTime::now())),
                ..p
            },
        }
    }

    /// The attributes as set, `mtime` `None` while no time was set.
    pub fn get(&self) -> Option<PosixMeta> {
        self.0.lock().posix
    }

    /// Changes the attributes; false when the mount keeps none.
    pub fn change(&self, f: impl FnOnce(&mut PosixMeta)) -> bool {
        let mut inner = self.0.lock();
        match &mut inner.posix {
            Some(p) => {
                f(p);
                inner.unstored = true;
                true
            }
            None => false,
        }
    }

    /// Notes the version the file was opened at, or just stored as.
    pub fn note_version(&self, etag: &str) {
        self.0.lock().version = Some(etag.to_owned());
    }

    /// The ETag of the version the file was opened at or last stored as.
    pub fn version(&self) -> Option<String> {
        self.0.lock().version.clone()
    }

    /// Whether a change was made after the last commit started (so no
    /// commit stored it: the file had nothing else to store, or its
    /// multipart upload had begun).
    pub fn has_unstored_change(&self) -> bool {
        self.0.lock().unstored
    }
}

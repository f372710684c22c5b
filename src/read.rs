//! The read path: open file handles and the ranged GETs that serve them.
//!
//! Every handle is pinned to one object version (its ETag). Each read is a
//! ranged GET with `If-Match`, so a reader gets the bytes of the version it
//! opened or an error, never a mix of two versions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::{debug, warn};

use crate::error::FsError;
use crate::store::{ObjectStore, StoreError};

/// The object version a handle reads.
#[derive(Debug, Clone)]
struct Version {
    etag: String,
    size: u64,
}

/// One open file.
struct OpenFile {
    key: String,
    version: Mutex<Version>,
    /// Set once any byte has been returned; from then on the version may not
    /// change under this handle.
    served: AtomicBool,
}

pub struct Reader<S> {
    store: Arc<S>,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
}

impl<S: ObjectStore> Reader<S> {
    pub fn new(store: Arc<S>) -> Self {
        Reader {
            store,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// Opens `key` at the version the catalog saw; returns the handle number.
    pub fn open(&self, key: String, etag: String, size: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile {
            key,
            version: Mutex::new(Version { etag, size }),
            served: AtomicBool::new(false),
        };
        self.handles.lock().unwrap().insert(fh, Arc::new(file));
        fh
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the object.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let file = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut retried_version = false;
        loop {
            let version = file.version.lock().unwrap().clone();
            let end = offset.saturating_add(len as u64).min(version.size);
            if offset >= end {
                return Ok(Bytes::new());
            }
            match self
                .store
                .get_range(&file.key, &version.etag, offset..end)
                .await
            {
                Ok(bytes) => {
                    file.served.store(true, Ordering::Relaxed);
                    return Ok(bytes);
                }
                // The catalog's ETag may predate the open: the object was
                // replaced after it was listed. Before this handle has returned
                // any byte, the version "seen at open" is the current one.
                Err(StoreError::PreconditionFailed)
                    if !retried_version && !file.served.load(Ordering::Relaxed) =>
                {
                    retried_version = true;
                    let meta = self
                        .store
                        .head(&file.key)
                        .await
                        .map_err(|e| FsError::store(&file.key, e))?;
                    debug!(key = %file.key, etag = %meta.etag, "object replaced before first read; pinning new version");
                    *file.version.lock().unwrap() = Version {
                        etag: meta.etag,
                        size: meta.size,
                    };
                }
                Err(e) => {
                    warn!(key = %file.key, offset, error = %e, "read failed");
                    return Err(FsError::store(&file.key, e));
                }
            }
        }
    }
}

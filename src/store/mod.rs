//! Access to the object store, behind the [`ObjectStore`] trait.
//!
//! The filesystem layers above never see an SDK type: they ask for a listing
//! page, an object's metadata or a byte range pinned to an ETag, and get back
//! plain values or a [`StoreError`] that says what went wrong in terms they can
//! act on (not found, changed, denied, unreachable).

mod fan_out;
mod faults;
pub(crate) mod memory;
mod pieces;
mod posix_meta;
mod retry;
mod s3;

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;

pub use fan_out::FanOut;
pub use faults::{FaultCounts, FaultPlan, FaultyStore};
pub use memory::MemoryStore;
pub use pieces::limit_pool;
pub use posix_meta::PosixMeta;
pub use s3::{S3Settings, S3Store};

/// Metadata of one object as S3 reports it in a listing or a HEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
    pub etag: String,
}

/// What must hold at a key for a write to it to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCondition<'a> {
    /// Whatever the key holds.
    Always,
    /// Only if the key holds no object (`If-None-Match: *`): create-only.
    IfAbsent,
    /// Only over the version with this ETag (`If-Match`).
    IfMatch(&'a str),
}

impl<'a> WriteCondition<'a> {
    /// `IfMatch(etag)` when there is an ETag to match, else `Always`.
    pub fn matching(etag: Option<&'a str>) -> Self {
        etag.map_or(WriteCondition::Always, WriteCondition::IfMatch)
    }
}

/// What s3mount reads from an object's user metadata with
/// [`ObjectStore::head_metadata`]: the marks of a conditional write (whose
/// write it was, a token unique to the request, and for a copy the ETag
/// of the source version copied), and the POSIX attributes it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserMetadata {
    pub token: Option<String>,
    pub copied_from: Option<String>,
    pub posix: PosixMeta,
}

/// One page of a ListObjectsV2 response.
#[derive(Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    /// Continuation token for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Bytes to upload.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    /// A few bytes held in memory (a claim lock's owner).
    Small(Bytes),
    /// `len` bytes of a local file from `offset`. The file is read as the
    /// request is sent (and again if it is retried), so no part has to be
    /// held in memory.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Body {
    /// Bytes the body carries.
    pub fn byte_len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Small(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// What went wrong talking to the store, in terms the layers above act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("bucket does not exist")]
    NoSuchBucket,
    #[error("object not found")]
    NotFound,
    #[error("object changed since it was opened (ETag no longer matches)")]
    PreconditionFailed,
    #[error("access denied ({0})")]
    AccessDenied(String),
    #[error("credentials rejected ({0})")]
    BadCredentials(String),
    #[error("no credentials found ({0})")]
    NoCredentials(String),
    #[error("cannot connect ({0})")]
    Unreachable(String),
    #[error("timed out ({0})")]
    Timeout(String),
    #[error("response body broke off ({0})")]
    BodyInterrupted(String),
    #[error("server busy or failing ({0})")]
    Unavailable(String),
    /// 503 SlowDown or 429: too many requests; with the server's Retry-After.
    #[error("throttled by the server ({0})")]
    Throttled(String, Option<std::time::Duration>),
    /// A response that could not be understood (a malformed listing page).
    #[error("malformed response ({0})")]
    Malformed(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether the same request may succeed if sent again: broken
    /// connections, timeouts, throttling and server errors. A changed or
    /// missing object, or refused credentials, will not get better.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::BodyInterrupted(_)
                | StoreError::Timeout(_)
                | StoreError::Unreachable(_)
                | StoreError::Unavailable(_)
                | StoreError::Throttled(..)
                | StoreError::Malformed(_)
        )
    }

    /// Whether a request that failed this way may still have been carried
    /// out: the answer was lost after the request went out (a broken or
    /// timed-out connection, a garbled or 5xx answer). Throttling and
    /// refusals say the server did nothing.
    pub fn may_have_been_carried_out(&self) -> bool {
        matches!(
            self,
            StoreError::BodyInterrupted(_)
                | StoreError::Timeout(_)
                | StoreError::Unreachable(_)
                | StoreError::Unavailable(_)
                | StoreError::Malformed(_)
        )
    }

    /// Whether the server asked for fewer requests (503 SlowDown, 429).
    pub fn is_throttling(&self) -> bool {
        matches!(self, StoreError::Throttled(..))
    }

    /// How long the server asked to wait before trying again.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            StoreError::Throttled(_, wait) => *wait,
            _ => None,
        }
    }
}

/// The operations the filesystem needs from an S3-compatible store.
///
/// Futures are `Send` so the FUSE adapter can run them on the tokio runtime.
pub trait ObjectStore: Send + Sync + 'static {
    /// A human-readable name of the target for messages (`endpoint/bucket`).
    fn describe(&self) -> String;

    /// Lists one page under `prefix`; with `delimiter`, sub-prefixes are rolled up.
    fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> impl Future<Output = Result<ListPage, StoreError>> + Send;

    /// Fetches the current metadata of `key`.
    fn head(&self, key: &str) -> impl Future<Output = Result<ObjectMeta, StoreError>> + Send;

    /// Fetches `range` of `key`, but only from the version whose ETag is `etag`.
    /// A different current version gives [`StoreError::PreconditionFailed`].
    /// A body that breaks off is resumed from the exact byte where it broke,
    /// pinned to the same ETag, so callers see whole ranges or an error.
    ///
    /// The bytes are handed to `deliver` in order, in pieces of the lengths
    /// in `pieces` (which add up to the range's length), each as soon as its
    /// last byte has arrived and each in its own allocation, so a cache can
    /// serve the first pieces while the rest is in flight and free them one
    /// by one. After an error, the pieces delivered before it are whole
    /// and right.
    fn get_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        pieces: &[u64],
        deliver: &mut (dyn FnMut(Bytes) + Send),
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores `body` as `key` in one request, if `condition` holds (else
    /// [`StoreError::PreconditionFailed`]); returns the new ETag. A store
    /// that ignores conditions stores unconditionally (see
    /// [`ObjectStore::enforces_conditions`]). A conditional write whose
    /// first answer was lost and whose retry then fails the condition is
    /// recognised as this request's own success. Every upload carries the
    /// Content-Type its key's extension calls for, and `posix` in its user
    /// metadata.
    fn put(
        &self,
        key: &str,
        body: Body,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Starts a multipart upload of `key`, whose object will carry `posix`;
    /// returns its upload id.
    fn start_multipart(
        &self,
        key: &str,
        posix: &PosixMeta,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Uploads part `number` (from 1) of a multipart upload; returns its ETag.
    fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Body,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Uploads part `number` of a multipart upload of `to` as a server-side
    /// copy of `range` of `from`, pinned to version `etag` of `from` (else
    /// [`StoreError::PreconditionFailed`]); returns the part's ETag.
    fn copy_part(
        &self,
        from: &str,
        etag: &str,
        range: Range<u64>,
        to: &str,
        upload_id: &str,
        number: u32,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Completes a multipart upload from the ETags of parts 1, 2, ... in
    /// order, if `condition` holds; the object appears whole at this
    /// moment. Returns its ETag. Conditions as for [`ObjectStore::put`].
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        part_etags: Vec<String>,
        condition: WriteCondition<'_>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Abandons a multipart upload and frees its parts.
    fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Copies the version `etag` of `from` (of `size` bytes) to `to` inside
    /// the bucket, server-side, if `condition` holds at `to`; a different
    /// current version of `from`, or a failed condition, gives
    /// [`StoreError::PreconditionFailed`]. The copy appears whole or not at
    /// all, marked as a copy of `etag` ([`UserMetadata::copied_from`]),
    /// carrying `posix` (the copy's user metadata is replaced, never
    /// copied: the caller says what the source carried).
    /// Returns the copy's ETag.
    fn copy(
        &self,
        from: &str,
        etag: &str,
        size: u64,
        to: &str,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Changes the metadata of version `etag` of `key` (of `size` bytes)
    /// to carry `posix`: a copy onto itself pinned to that version (and
    /// `If-Match`, where enforced); returns the new version's ETag. With
    /// `keep_other`, what else it carries (other clients' user metadata,
    /// content headers, storage class) is read first and kept; without,
    /// it is known to carry nothing else (this mount wrote it).
    fn set_metadata(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        posix: &PosixMeta,
        keep_other: bool,
    ) -> impl Future<Output = Result<String, StoreError>> + Send {
        let _ = keep_other; // in memory nothing else is kept anyway
        self.copy(key, etag, size, key, WriteCondition::IfMatch(etag), posix)
    }

    /// Deletes `key`; deleting a missing key succeeds. With `if_match`,
    /// only the version with that ETag: another version gives
    /// [`StoreError::PreconditionFailed`] and a missing key
    /// [`StoreError::NotFound`].
    fn delete(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The current metadata of `key` with what its user metadata says.
    fn head_metadata(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(ObjectMeta, UserMetadata), StoreError>> + Send;

    /// Whether the store refuses writes whose condition fails (AWS S3 and
    /// SeaweedFS do; Garage ignores write conditions). Known once
    /// [`ObjectStore::probe_conditions`] has run; `false` until then.
    fn enforces_conditions(&self) -> bool;

    /// Finds out whether the store enforces write conditions, with one
    /// create-only write of a probe key under `prefix` (removed again when
    /// the store created it), and remembers the answer.
    fn probe_conditions(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

//! Conditional writes: the `If-Match`/`If-None-Match` headers of a
//! [`WriteCondition`], the marks (user metadata) a conditional write carries
//! so that a retry after a lost answer recognises its own success, and the
//! probe that finds out whether the store enforces conditions at all.

use std::collections::HashMap;

use tracing::debug;

use super::S3Store;
use crate::store::{Body, ObjectStore, PosixMeta, StoreError, WriteCondition};

/// User metadata naming the request that wrote an object conditionally.
pub(super) const MARK_TOKEN: &str = "s3mount-write";
/// User metadata naming the source version of a copy.
pub(super) const MARK_COPIED_FROM: &str = "s3mount-copied-from";

/// An ETag in the quoted form listings and HEAD give.
pub(super) fn quoted(etag: &str) -> String {
    if etag.starts_with('"') || etag.is_empty() {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}

/// A token unique to one write request.
pub(super) fn write_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The user metadata of a write: its marks (a token when the write is
/// conditional, the source version of a copy) and POSIX attributes; `None`
/// when there is nothing to carry.
pub(super) fn write_metadata(
    token: Option<&str>,
    copied_from: Option<&str>,
    posix: &PosixMeta,
) -> Option<HashMap<String, String>> {
    let mut metadata = HashMap::new();
    if let Some(token) = token {
        metadata.insert(MARK_TOKEN.to_owned(), token.to_owned());
    }
    if let Some(etag) = copied_from {
        metadata.insert(MARK_COPIED_FROM.to_owned(), etag.to_owned());
    }
    posix.add_to(&mut metadata);
    (!metadata.is_empty()).then_some(metadata)
}

/// The `If-Match` and `If-None-Match` headers of a write.
pub(super) fn condition_headers(condition: WriteCondition<'_>) -> (Option<String>, Option<String>) {
    match condition {
        WriteCondition::Always => (None, None),
        WriteCondition::IfAbsent => (None, Some("*".to_owned())),
        WriteCondition::IfMatch(etag) => (Some(etag.to_owned()), None),
    }
}

impl S3Store {
    /// The ETag a write produced: `etag_of` its answer, or, when its
    /// condition failed (or its target vanished) on a retry after an
    /// attempt whose answer was lost, what that earlier attempt wrote if
    /// the key holds it (see [`S3Store::own_earlier_write`]).
    pub(super) async fn written<T>(
        &self,
        key: &str,
        token: Option<&str>,
        (result, in_doubt): (Result<T, StoreError>, bool),
        etag_of: impl FnOnce(T) -> String,
    ) -> Result<String, StoreError> {
        match result {
            Ok(out) => Ok(etag_of(out)),
            Err(StoreError::PreconditionFailed | StoreError::NotFound) if in_doubt => {
                self.own_earlier_write(key, token).await
            }
            Err(e) => Err(e),
        }
    }

    /// After a conditional write failed its condition on a retry: whether
    /// the key holds what this request's own earlier attempt wrote (its
    /// answer lost), and then that version's ETag.
    pub(super) async fn own_earlier_write(
        &self,
        key: &str,
        token: Option<&str>,
    ) -> Result<String, StoreError> {
        match (token, self.head_metadata(key).await) {
            (Some(token), Ok((meta, marks))) if marks.token.as_deref() == Some(token) => {
                debug!(
                    key,
                    "a conditional write whose answer was lost had succeeded"
                );
                Ok(meta.etag)
            }
            _ => Err(StoreError::PreconditionFailed),
        }
    }

    /// Whether the store refuses a write whose condition fails: one write
    /// over a version that cannot exist, under `prefix`.
    pub(super) async fn probe_enforcement(&self, prefix: &str) -> Result<bool, StoreError> {
        // A write over a version that cannot exist: a store that enforces
        // conditions refuses it and nothing is written; one that ignores
        // them creates the probe object, which goes again at once.
        let key = format!(
            "{prefix}{}{}",
            crate::names::PROBE_NAME_PREFIX,
            write_token()
        );
        let enforced = match self
            .put(
                &key,
                Body::Empty,
                WriteCondition::IfMatch("\"s3mount-probe-no-such-version\""),
                &PosixMeta::NONE,
            )
            .await
        {
            Err(StoreError::PreconditionFailed | StoreError::NotFound) => true,
            Ok(_) => {
                self.delete(&key, None).await?;
                false
            }
            Err(e) => return Err(e),
        };
        Ok(enforced)
    }
}

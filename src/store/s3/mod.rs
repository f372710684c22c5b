//! [`ObjectStore`] on aws-sdk-s3, for AWS and S3-compatible endpoints: the
//! operations. Building the client is `client`, counting requests
//! `request_meter`, turning SDK errors into [`StoreError`] `classify`.

mod classify;
mod client;
mod conditions;
mod request_meter;

use classify::{classify, root_cause, sent, Missing};
pub use client::S3Settings;
use conditions::{
    condition_headers, quoted, write_metadata, write_token, MARK_COPIED_FROM, MARK_TOKEN,
};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tracing::debug;

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};

use super::fan_out::FanOut;
use super::pieces::PieceSink;
use super::posix_meta::{META_GID, META_MODE, META_MTIME, META_UID};
use super::retry::{Backoff, RetryPolicy};
use super::{
    Body, ListPage, ObjectMeta, ObjectStore, PosixMeta, StoreError, UserMetadata, WriteCondition,
};
/// The largest object one CopyObject request may copy.
const SINGLE_COPY_LIMIT: u64 = 5 << 30;

/// How often a conditional delete refused while its version is still there
/// is sent (see `delete`).
const REFUSED_DELETE_TRIES: usize = 5;
/// Part copies in flight at once for one multipart copy.
const COPY_CONCURRENCY: usize = 8;

/// Bound on one attempt of a request with a small answer (list, head,
/// delete, create/abort upload): a body that stalls is retried, not waited on.
const SMALL_ATTEMPT: Option<Duration> = Some(Duration::from_secs(30));
/// Bound on one attempt of a server-side copy or a multipart completion,
/// which S3 may take minutes to answer for large objects.
const SLOW_ATTEMPT: Option<Duration> = Some(Duration::from_secs(15 * 60));

/// Bound on one attempt of an upload of `len` bytes: a minute plus the time
/// to send them at 256 KiB/s, so only a stalled connection hits it.
fn upload_attempt(len: u64) -> Option<Duration> {
    Some(Duration::from_secs(60) + Duration::from_secs(len / (256 * 1024)))
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    endpoint: String,
    credentials: aws_sdk_s3::config::SharedCredentialsProvider,
    resumes: AtomicU64,
    /// HTTP attempts sent, counted by the request meter.
    attempts: Arc<AtomicU64>,
    /// The token of each multipart upload in progress (see `create_upload`).
    upload_tokens: parking_lot::Mutex<HashMap<String, String>>,
    /// What `probe_conditions` found.
    enforces_conditions: std::sync::atomic::AtomicBool,
    idle_timeout: Duration,
    copy_threshold: u64,
    policy: Arc<RetryPolicy>,
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("{}/{}", self.endpoint, self.bucket)
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        let out = self
            .policy
            .run("ListObjectsV2", prefix, SMALL_ATTEMPT, || {
                let request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_delimiter(delimiter.map(str::to_owned))
                    .set_continuation_token(continuation.clone())
                    .set_max_keys(max_keys)
                    .send();
                async move { check_page(prefix, sent(request, Missing::Bucket).await?) }
            })
            .await?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectMeta {
                    key: o.key()?.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o.last_modified().map(to_system_time).unwrap_or(UNIX_EPOCH),
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        let next = match out.is_truncated() {
            Some(true) => out.next_continuation_token().map(str::to_owned),
            _ => None,
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next,
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        Ok(object_meta(key, &self.head_output(key).await?))
    }

    async fn get_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        pieces: &[u64],
        deliver: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<(), StoreError> {
        let expected = range.end.saturating_sub(range.start);
        debug_assert_eq!(pieces.iter().sum::<u64>(), expected);
        let mut sink = PieceSink::new(pieces, deliver);
        // Retried here rather than by `RetryPolicy::run`, because a retry
        // resumes at the byte where the body broke: at once after progress,
        // after the policy's backoff without.
        let mut backoff = Backoff::new(self.policy.bound());
        while sink.received < expected {
            let from = range.start + sink.received;
            let before = sink.received;
            tracing::trace!(key, from, to = range.end, "ranged GET");
            let result = {
                let _room = self.policy.gate.enter().await;
                self.get_into(key, etag, from..range.end, &mut sink).await
            };
            let Err(e) = result else {
                self.policy.gate.succeeded();
                continue;
            };
            if sink.received > before {
                backoff.progressed();
            }
            let wait = self.policy.failed(&mut backoff, &e, "GetObject", key);
            let Some(wait) = wait else {
                return Err(e);
            };
            if sink.received == before {
                tokio::time::sleep(wait).await;
            }
            self.resumes.fetch_add(1, Ordering::Relaxed);
            debug!(key, offset = range.start + sink.received, error = %e, "resuming ranged GET");
        }
        Ok(())
    }

    async fn put(
        &self,
        key: &str,
        body: Body,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        let token = (condition != WriteCondition::Always).then(write_token);
        let (result, in_doubt) = self
            .policy
            .run_noting_doubt("PutObject", key, upload_attempt(body.byte_len()), || {
                let body = body.clone();
                let token = token.clone();
                async move {
                    let (if_match, if_none_match) = condition_headers(condition);
                    self.client
                        .put_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .content_type(content_type(key))
                        .set_if_match(if_match)
                        .set_if_none_match(if_none_match)
                        .set_metadata(write_metadata(token.as_deref(), None, posix))
                        .body(byte_stream(body).await?)
                        .send()
                        .await
                        .map_err(|e| classify(e, Missing::Bucket))
                }
            })
            .await;
        self.written(key, token.as_deref(), (result, in_doubt), |out| {
            out.e_tag().unwrap_or_default().to_owned()
        })
        .await
    }

    async fn start_multipart(&self, key: &str, posix: &PosixMeta) -> Result<String, StoreError> {
        self.create_upload(key, None, (posix, None)).await
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Body,
    ) -> Result<String, StoreError> {
        // A failed part is sent again from the spool; the parts before it
        // stay uploaded.
        let out = self
            .policy
            .run("UploadPart", key, upload_attempt(body.byte_len()), || {
                let body = body.clone();
                async move {
                    self.client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number as i32)
                        .body(byte_stream(body).await?)
                        .send()
                        .await
                        .map_err(|e| classify(e, Missing::Object))
                }
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        part_etags: Vec<String>,
        condition: WriteCondition<'_>,
    ) -> Result<String, StoreError> {
        let parts = part_etags
            .into_iter()
            .enumerate()
            .map(|(i, etag)| {
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        let parts: Vec<CompletedPart> = parts;
        let (if_match, if_none_match) = condition_headers(condition);
        let (result, in_doubt) = self
            .policy
            .run_noting_doubt("CompleteMultipartUpload", key, SLOW_ATTEMPT, || {
                sent(
                    self.client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .set_if_match(if_match.clone())
                        .set_if_none_match(if_none_match.clone())
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts.clone()))
                                .build(),
                        )
                        .send(),
                    Missing::Object,
                )
            })
            .await;
        let token = self.upload_tokens.lock().remove(upload_id);
        // A completion retried after a lost answer finds the upload gone
        // (or the condition failed by itself): the object tells.
        self.written(key, token.as_deref(), (result, in_doubt), |out| {
            out.e_tag().unwrap_or_default().to_owned()
        })
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.upload_tokens.lock().remove(upload_id);
        self.policy
            .run("AbortMultipartUpload", key, SMALL_ATTEMPT, || {
                sent(
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .send(),
                    Missing::Object,
                )
            })
            .await?;
        Ok(())
    }

    async fn copy(
        &self,
        from: &str,
        etag: &str,
        size: u64,
        to: &str,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        self.copy_keeping(from, etag, size, to, condition, (posix, None))
            .await
    }

    async fn set_metadata(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        posix: &PosixMeta,
        keep_other: bool,
    ) -> Result<String, StoreError> {
        let kept = match keep_other {
            true => Some(self.kept_properties(key, etag).await?),
            false => None,
        };
        let condition = WriteCondition::IfMatch(etag);
        self.copy_keeping(key, etag, size, key, condition, (posix, kept.as_ref()))
            .await
    }

    async fn copy_part(
        &self,
        from: &str,
        etag: &str,
        range: Range<u64>,
        to: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<String, StoreError> {
        self.part_copy_request(from, etag, range, to, upload_id, number)
            .await
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        // A conditional delete refused while the key still holds the very
        // version it names was not refused for its condition (SeaweedFS
        // answers so when a retry meets its lock): it is sent again, for
        // a caller that reads a refusal as "replaced" would otherwise
        // leave the source of a claim behind.
        for _ in 0..REFUSED_DELETE_TRIES {
            let (result, in_doubt) = self
                .policy
                .run_noting_doubt("DeleteObject", key, SMALL_ATTEMPT, || {
                    sent(
                        self.client
                            .delete_object()
                            .bucket(&self.bucket)
                            .key(key)
                            .set_if_match(if_match.map(str::to_owned))
                            .send(),
                        Missing::Object,
                    )
                })
                .await;
            let Some(wanted) = if_match else {
                return result.map(|_| ());
            };
            match result {
                Ok(_) => return Ok(()),
                // Stores differ on a conditional delete of a missing key
                // (AWS answers 404, SeaweedFS 412): the key itself tells.
                Err(StoreError::PreconditionFailed | StoreError::NotFound) => {
                    match self.head(key).await {
                        // Gone: deleted by this request's own first attempt
                        // (its answer lost), or by someone else.
                        Err(StoreError::NotFound) if in_doubt => return Ok(()),
                        Err(StoreError::NotFound) => return Err(StoreError::NotFound),
                        Ok(meta) if unquoted(&meta.etag) == unquoted(wanted) => {
                            debug!(key, "a conditional delete was refused though its version is there; again");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(_) => return Err(StoreError::PreconditionFailed),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "DeleteObject {key}: refused {REFUSED_DELETE_TRIES} times though the version it names is there"
        )))
    }

    async fn head_metadata(&self, key: &str) -> Result<(ObjectMeta, UserMetadata), StoreError> {
        let out = self.head_output(key).await?;
        let mark = |name: &str| {
            out.metadata()
                .and_then(|m| m.get(name))
                .map(|v| v.to_owned())
        };
        let marks = UserMetadata {
            token: mark(MARK_TOKEN),
            copied_from: mark(MARK_COPIED_FROM),
            posix: PosixMeta::from_headers(
                out.metadata()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
        };
        Ok((object_meta(key, &out), marks))
    }

    fn enforces_conditions(&self) -> bool {
        self.enforces_conditions.load(Ordering::Relaxed)
    }

    async fn probe_conditions(&self, prefix: &str) -> Result<bool, StoreError> {
        let enforced = self.probe_enforcement(prefix).await?;
        self.enforces_conditions.store(enforced, Ordering::Relaxed);
        Ok(enforced)
    }
}

fn object_meta(key: &str, out: &HeadObjectOutput) -> ObjectMeta {
    ObjectMeta {
        key: key.to_owned(),
        size: out.content_length().unwrap_or(0).max(0) as u64,
        last_modified: out
            .last_modified()
            .map(to_system_time)
            .unwrap_or(UNIX_EPOCH),
        etag: out.e_tag().unwrap_or_default().to_owned(),
    }
}

/// The Content-Type of an object, from its key's extension, so a bucket
/// served to browsers shows what it holds; `application/octet-stream` when
/// the extension says nothing.
pub fn content_type(key: &str) -> String {
    mime_guess::from_path(key)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// A request body from [`Body`]; a file range is streamed from disk.
async fn byte_stream(body: Body) -> Result<ByteStream, StoreError> {
    match body {
        Body::Empty => Ok(ByteStream::from_static(b"")),
        Body::Small(bytes) => Ok(ByteStream::from(bytes)),
        Body::File { path, offset, len } => ByteStream::read_from()
            .path(&path)
            .offset(offset)
            .length(Length::Exact(len))
            .buffer_size(256 * 1024)
            .build()
            .await
            .map_err(|e| {
                StoreError::Other(format!(
                    "cannot read upload data from {}: {e}",
                    path.display()
                ))
            }),
    }
}

/// What an object carries besides its data and s3mount's own metadata,
/// kept by a copy onto itself (a metadata-only change). Its ACL and
/// encryption key are not: they are not in a HEAD's answer.
#[derive(Debug, Clone, Default)]
struct KeptProperties {
    metadata: HashMap<String, String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    storage_class: Option<aws_sdk_s3::types::StorageClass>,
}

/// `ours` (s3mount's marks and POSIX metadata) over what `kept` carries.
fn with_kept(
    ours: Option<HashMap<String, String>>,
    kept: Option<&KeptProperties>,
) -> Option<HashMap<String, String>> {
    let Some(kept) = kept.filter(|k| !k.metadata.is_empty()) else {
        return ours;
    };
    let mut all = kept.metadata.clone();
    all.extend(ours.unwrap_or_default());
    Some(all)
}

/// The `x-amz-copy-source` value: `bucket/key`, percent-encoded except for
/// the characters S3 keys use unescaped in paths.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for b in bucket
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.bytes())
    {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Part size for copying `size` bytes in parts: the threshold (at most
/// 512 MiB, at least S3's 5 MiB minimum), grown so no copy needs more than
/// S3's 10,000 parts.
fn copy_part_size(size: u64, threshold: u64) -> u64 {
    let base = threshold.clamp(5 << 20, 512 << 20);
    base.max(size.div_ceil(10_000))
}

impl S3Store {
    /// A server-side copy of a large object with UploadPartCopy, several
    /// parts at once, each pinned to the source ETag. A failure aborts the
    /// upload, so nothing appears under `to`.
    async fn copy_in_parts(
        &self,
        from: &str,
        etag: &str,
        size: u64,
        to: &str,
        condition: WriteCondition<'_>,
        (posix, kept): (&PosixMeta, Option<&KeptProperties>),
    ) -> Result<String, StoreError> {
        let part = copy_part_size(size, self.copy_threshold);
        let upload_id = self.create_upload(to, Some(etag), (posix, kept)).await?;
        let mut copies = FanOut::new(COPY_CONCURRENCY, |e| {
            StoreError::Other(format!("part copy task failed: {e}"))
        });
        for (i, start) in (0..size).step_by(part as usize).enumerate() {
            let end = (start + part).min(size);
            let request =
                self.part_copy_request(from, etag, start..end, to, &upload_id, i as u32 + 1);
            if copies
                .spawn(async move { Ok((i, request.await?)) })
                .await
                .is_err()
            {
                break;
            }
        }
        let result = match copies.finish().await {
            Ok(mut parts) => {
                parts.sort_unstable_by_key(|p| p.0);
                let etags = parts.into_iter().map(|p| p.1).collect();
                self.complete_multipart(to, &upload_id, etags, condition)
                    .await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            if let Err(e) = self.abort_multipart(to, &upload_id).await {
                debug!(key = to, error = %e, "cannot abort a failed multipart copy");
            }
        }
        result
    }

    /// Starts a multipart upload marked with a token of its own (kept until
    /// it completes or is aborted), so a completion whose answer was lost is
    /// recognised; `copied_from` marks a copy's source version. The object
    /// will carry `posix`.
    async fn create_upload(
        &self,
        key: &str,
        copied_from: Option<&str>,
        (posix, kept): (&PosixMeta, Option<&KeptProperties>),
    ) -> Result<String, StoreError> {
        let token = write_token();
        let metadata = with_kept(write_metadata(Some(&token), copied_from, posix), kept);
        let kept_type = kept.and_then(|k| k.content_type.clone());
        let out = self
            .policy
            .run("CreateMultipartUpload", key, SMALL_ATTEMPT, || {
                sent(
                    self.client
                        .create_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .content_type(kept_type.clone().unwrap_or_else(|| content_type(key)))
                        .set_metadata(metadata.clone())
                        .set_content_encoding(kept.and_then(|k| k.content_encoding.clone()))
                        .set_cache_control(kept.and_then(|k| k.cache_control.clone()))
                        .set_content_disposition(kept.and_then(|k| k.content_disposition.clone()))
                        .set_content_language(kept.and_then(|k| k.content_language.clone()))
                        .set_storage_class(kept.and_then(|k| k.storage_class.clone()))
                        .send(),
                    Missing::Bucket,
                )
            })
            .await?;
        let upload_id = out.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::Other("CreateMultipartUpload returned no upload id".into())
        })?;
        self.upload_tokens.lock().insert(upload_id.clone(), token);
        Ok(upload_id)
    }

    /// A server-side copy carrying `posix`, and what `kept` says the
    /// source carried besides (for a copy onto itself).
    async fn copy_keeping(
        &self,
        from: &str,
        etag: &str,
        size: u64,
        to: &str,
        condition: WriteCondition<'_>,
        (posix, kept): (&PosixMeta, Option<&KeptProperties>),
    ) -> Result<String, StoreError> {
        if size > self.copy_threshold {
            // Boxed: a copy in parts is rare and its future large.
            return Box::pin(self.copy_in_parts(from, etag, size, to, condition, (posix, kept)))
                .await;
        }
        let token = write_token();
        let (if_match, if_none_match) = condition_headers(condition);
        let metadata = with_kept(write_metadata(Some(&token), Some(etag), posix), kept);
        let kept_type = kept.and_then(|k| k.content_type.clone());
        let (result, in_doubt) = self
            .policy
            .run_noting_doubt("CopyObject", to, SLOW_ATTEMPT, || {
                sent(
                    self.client
                        .copy_object()
                        .bucket(&self.bucket)
                        .key(to)
                        .copy_source(copy_source(&self.bucket, from))
                        .copy_source_if_match(etag)
                        .set_if_match(if_match.clone())
                        .set_if_none_match(if_none_match.clone())
                        // The copy's Content-Type follows its new name, as any
                        // upload's (a copy onto itself keeps its own).
                        .metadata_directive(MetadataDirective::Replace)
                        .content_type(kept_type.clone().unwrap_or_else(|| content_type(to)))
                        .set_metadata(metadata.clone())
                        .set_content_encoding(kept.and_then(|k| k.content_encoding.clone()))
                        .set_cache_control(kept.and_then(|k| k.cache_control.clone()))
                        .set_content_disposition(kept.and_then(|k| k.content_disposition.clone()))
                        .set_content_language(kept.and_then(|k| k.content_language.clone()))
                        .set_storage_class(kept.and_then(|k| k.storage_class.clone()))
                        .send(),
                    Missing::Object,
                )
            })
            .await;
        // Some stores (SeaweedFS) leave a copy's ETag unquoted; HEAD and
        // listings quote it.
        self.written(to, Some(&token), (result, in_doubt), |out| {
            quoted(
                out.copy_object_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default(),
            )
        })
        .await
    }

    /// What version `etag` of `key` carries besides its data and the
    /// metadata s3mount writes, for a copy onto itself to keep.
    async fn kept_properties(&self, key: &str, etag: &str) -> Result<KeptProperties, StoreError> {
        let out = self.head_output(key).await?;
        if unquoted(out.e_tag().unwrap_or_default()) != unquoted(etag) {
            return Err(StoreError::PreconditionFailed);
        }
        let ours = [
            MARK_TOKEN,
            MARK_COPIED_FROM,
            META_MODE,
            META_UID,
            META_GID,
            META_MTIME,
        ];
        let metadata = out
            .metadata()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !ours.iter().any(|o| k.eq_ignore_ascii_case(o)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(KeptProperties {
            metadata,
            content_type: out.content_type().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            cache_control: out.cache_control().map(str::to_owned),
            content_disposition: out.content_disposition().map(str::to_owned),
            content_language: out.content_language().map(str::to_owned),
            storage_class: out
                .storage_class()
                .map(|c| aws_sdk_s3::types::StorageClass::from(c.as_str())),
        })
    }

    async fn head_output(&self, key: &str) -> Result<HeadObjectOutput, StoreError> {
        self.policy
            .run("HeadObject", key, SMALL_ATTEMPT, || {
                sent(
                    self.client
                        .head_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .send(),
                    Missing::Object,
                )
            })
            .await
    }

    /// An UploadPartCopy request that owns what it needs, so it can be
    /// spawned.
    fn part_copy_request(
        &self,
        from: &str,
        etag: &str,
        range: Range<u64>,
        to: &str,
        upload_id: &str,
        number: u32,
    ) -> impl std::future::Future<Output = Result<String, StoreError>> + Send + 'static {
        let request = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(to)
            .upload_id(upload_id)
            .part_number(number as i32)
            .copy_source(copy_source(&self.bucket, from))
            .copy_source_if_match(etag)
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1));
        let (policy, to) = (self.policy.clone(), to.to_owned());
        async move {
            let out = policy
                .run("UploadPartCopy", &to, SLOW_ATTEMPT, || {
                    sent(request.clone().send(), Missing::Object)
                })
                .await?;
            Ok(out
                .copy_part_result()
                .and_then(|r| r.e_tag())
                .unwrap_or_default()
                .to_owned())
        }
    }

    /// Time from sending a one-byte ranged GET of `key` to its first body
    /// byte: what every read of a new range pays.
    pub async fn time_to_first_byte(&self, key: &str) -> Result<Duration, StoreError> {
        let start = std::time::Instant::now();
        let mut out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range("bytes=0-0")
            .send()
            .await
            .map_err(|e| classify(e, Missing::Object))?;
        let _ = out.body.next().await;
        Ok(start.elapsed())
    }

    /// Resumes and retries done by ranged GETs so far.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }

    /// One ranged GET of `range`, handing bytes to `sink` as they arrive.
    async fn get_into(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        sink: &mut PieceSink<'_>,
    ) -> Result<(), StoreError> {
        let mut out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(etag)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| classify(e, Missing::Object))?;
        // A server that ignores If-Match on ranged GETs would otherwise let a
        // reader mix versions; check the ETag it answered with as well.
        if let Some(got) = out.e_tag() {
            if got != etag {
                return Err(StoreError::PreconditionFailed);
            }
        }
        let want = range.end - range.start;
        let start = sink.received;
        // One timer for the whole body, pushed back only when it fires
        // early: arming a timer per chunk costs more than the chunk's copy.
        let mut last_data = tokio::time::Instant::now();
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        loop {
            let chunk = tokio::select! {
                biased;
                next = out.body.next() => match next {
                    None => break,
                    Some(Err(e)) => return Err(StoreError::BodyInterrupted(root_cause(&e))),
                    Some(Ok(chunk)) => chunk,
                },
                () = &mut idle => {
                    if last_data.elapsed() >= self.idle_timeout {
                        return Err(StoreError::BodyInterrupted(format!(
                            "no data for {:?}",
                            self.idle_timeout
                        )));
                    }
                    idle.as_mut().reset(last_data + self.idle_timeout);
                    continue;
                }
            };
            last_data = tokio::time::Instant::now();
            sink.push(&chunk);
        }
        let got = sink.received - start;
        if got < want {
            return Err(StoreError::BodyInterrupted(format!(
                "body ended after {got} of {want} bytes"
            )));
        }
        Ok(())
    }
}

/// A listing page as sent, or an error if it was damaged on the way. The
/// SDK's XML reader accepts a document cut short; S3 always sends
/// IsTruncated, and KeyCount with the keys, so a page without IsTruncated,
/// or whose KeyCount disagrees with what it holds, is not trusted.
fn check_page(prefix: &str, out: ListObjectsV2Output) -> Result<ListObjectsV2Output, StoreError> {
    let count = out.contents().len() + out.common_prefixes().len();
    if out.is_truncated().is_none() || out.key_count().is_some_and(|n| n as usize != count) {
        return Err(StoreError::Malformed(format!(
            "a listing page of {prefix} is incomplete ({count} entries, KeyCount {:?}, IsTruncated {:?})",
            out.key_count(),
            out.is_truncated()
        )));
    }
    Ok(out)
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> SystemTime {
    let secs = t.secs();
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, t.subsec_nanos())
    } else {
        UNIX_EPOCH
    }
}

/// An ETag without its quotes: stores differ in quoting them.
fn unquoted(etag: &str) -> &str {
    etag.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_follows_the_extension() {
        assert_eq!(content_type("a/report.csv"), "text/csv");
        assert_eq!(content_type("page.HTML"), "text/html");
        assert_eq!(content_type("data.json"), "application/json");
        assert_eq!(content_type("blob"), "application/octet-stream");
        assert_eq!(content_type("dir/"), "application/octet-stream");
    }

    #[test]
    fn copy_source_escapes_what_a_header_cannot_carry() {
        assert_eq!(copy_source("b", "dir/a b+c.txt"), "b/dir/a%20b%2Bc.txt");
        assert_eq!(copy_source("b", "é"), "b/%C3%A9");
    }

    #[test]
    fn copy_parts_stay_within_limits() {
        assert_eq!(copy_part_size(20 << 20, 8 << 20), 8 << 20);
        assert_eq!(copy_part_size(20 << 20, 1), 5 << 20);
        let huge = 5u64 << 40;
        assert!(huge.div_ceil(copy_part_size(huge, SINGLE_COPY_LIMIT)) <= 10_000);
    }
}

//! [`ObjectStore`] on aws-sdk-s3, for AWS and S3-compatible endpoints.

use std::error::Error as StdError;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::default_provider::region::DefaultRegionChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    ProvideCredentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tracing::debug;

use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use super::fan_out::FanOut;
use super::pieces::PieceSink;
use super::retry::{Backoff, Congestion, RetryPolicy};
use super::{Body, ListPage, ObjectMeta, ObjectStore, StoreError};

/// How to reach the store; filled from the command line.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub force_path_style: bool,
    /// Compute request checksums only where the API requires them. Needed by
    /// stores (Garage, older MinIO) that reject aws-chunked CRC32 uploads.
    pub checksums_when_required: bool,
    /// A GET body that delivers no byte for this long is abandoned and
    /// resumed; zero means the default of 5 s.
    pub idle_timeout: Duration,
    /// Objects larger than this are copied in parts (UploadPartCopy); zero
    /// means S3's single-copy limit of 5 GiB.
    pub multipart_copy_threshold: u64,
    /// How long a request is retried through transient errors before its
    /// operation fails; zero means the default of 60 s.
    pub retry_timeout: Duration,
    /// Most requests in flight at once when S3 is not throttling (the
    /// ceiling of [`Congestion`]); zero means 256.
    pub max_requests: usize,
}

/// The largest object one CopyObject request may copy.
const SINGLE_COPY_LIMIT: u64 = 5 << 30;
/// Part copies in flight at once for one multipart copy.
const COPY_CONCURRENCY: usize = 8;

/// Connect timeout: an endpoint that does not accept a TCP connection in this
/// time is treated as unreachable rather than left to hang the caller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for response headers of one attempt.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
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
    idle_timeout: Duration,
    copy_threshold: u64,
    policy: Arc<RetryPolicy>,
}

impl S3Store {
    /// Builds a client from the standard AWS configuration chain plus the
    /// explicit settings. Makes no request.
    pub async fn connect(settings: &S3Settings) -> Self {
        // The instance-metadata service is the last link of the chains; keep it
        // from stalling a mount on a machine that has none.
        let imds = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(1))
            .max_attempts(2)
            .build();
        let mut creds = DefaultCredentialsChain::builder().imds_client(imds);
        let mut region_chain = DefaultRegionChain::builder();
        if let Some(profile) = &settings.profile {
            creds = creds.profile_name(profile);
            region_chain = region_chain.profile_name(profile);
        }
        let region = match &settings.region {
            Some(r) => Region::new(r.clone()),
            None => {
                let found = if settings.endpoint_url.is_some() {
                    // A custom endpoint rarely cares about the region; do not
                    // ask instance metadata for one.
                    std::env::var("AWS_REGION")
                        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                        .ok()
                        .map(Region::new)
                } else {
                    region_chain.build().region().await
                };
                found.unwrap_or_else(|| Region::new("us-east-1"))
            }
        };
        let credentials =
            SharedCredentialsProvider::new(creds.region(region.clone()).build().await);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials.clone())
            // Retried by `RetryPolicy`, the one retry layer.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk_config = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(settings.force_path_style);
        if settings.checksums_when_required {
            builder = builder
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let config = builder.interceptor(RequestMeter).build();
        let endpoint = settings.endpoint_url.clone().unwrap_or_else(|| {
            format!(
                "s3.{}.amazonaws.com",
                config.region().map(|r| r.as_ref()).unwrap_or("us-east-1")
            )
        });
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket.clone(),
            endpoint,
            credentials,
            resumes: AtomicU64::new(0),
            idle_timeout: if settings.idle_timeout.is_zero() {
                Duration::from_secs(5)
            } else {
                settings.idle_timeout
            },
            copy_threshold: match settings.multipart_copy_threshold {
                0 => SINGLE_COPY_LIMIT,
                n => n.min(SINGLE_COPY_LIMIT),
            },
            policy: Arc::new(RetryPolicy::new(
                retry_bound(settings.retry_timeout),
                Congestion::new(match settings.max_requests {
                    0 => 256,
                    n => n,
                }),
            )),
        }
    }

    /// Sets how long requests are retried through transient errors.
    pub fn set_retry_timeout(&self, bound: Duration) {
        self.policy.set_bound(retry_bound(bound));
    }

    /// The current limit of requests in flight (lowered by throttling) and
    /// the throttling answers seen so far.
    pub fn congestion(&self) -> (usize, u64) {
        (self.policy.gate.limit(), self.policy.gate.throttled_total())
    }

    /// Resolves credentials once, so "none found" is reported as such and not
    /// as an opaque request failure.
    pub async fn check_credentials(&self) -> Result<(), StoreError> {
        self.credentials
            .provide_credentials()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::NoCredentials(root_cause(&e)))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
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
        let out = self
            .policy
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
            .await?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: out
                .last_modified()
                .map(to_system_time)
                .unwrap_or(UNIX_EPOCH),
            etag: out.e_tag().unwrap_or_default().to_owned(),
        })
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
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        let out = self
            .policy
            .run("PutObject", key, upload_attempt(body.byte_len()), || {
                let body = body.clone();
                async move {
                    self.client
                        .put_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .content_type(content_type(key))
                        .set_if_match(if_match.map(str::to_owned))
                        .body(byte_stream(body).await?)
                        .send()
                        .await
                        .map_err(|e| classify(e, Missing::Bucket))
                }
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn start_multipart(&self, key: &str) -> Result<String, StoreError> {
        let out = self
            .policy
            .run("CreateMultipartUpload", key, SMALL_ATTEMPT, || {
                sent(
                    self.client
                        .create_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .content_type(content_type(key))
                        .send(),
                    Missing::Bucket,
                )
            })
            .await?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Other("CreateMultipartUpload returned no upload id".into()))
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
        if_match: Option<&str>,
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
        let out = self
            .policy
            .run("CompleteMultipartUpload", key, SLOW_ATTEMPT, || {
                sent(
                    self.client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .set_if_match(if_match.map(str::to_owned))
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts.clone()))
                                .build(),
                        )
                        .send(),
                    Missing::Object,
                )
            })
            .await?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
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
    ) -> Result<String, StoreError> {
        if size > self.copy_threshold {
            return self.copy_in_parts(from, etag, size, to).await;
        }
        let out = self
            .policy
            .run("CopyObject", to, SLOW_ATTEMPT, || {
                sent(
                    self.client
                        .copy_object()
                        .bucket(&self.bucket)
                        .key(to)
                        .copy_source(copy_source(&self.bucket, from))
                        .copy_source_if_match(etag)
                        // The copy's Content-Type follows its new name, as any upload's.
                        .metadata_directive(MetadataDirective::Replace)
                        .content_type(content_type(to))
                        .send(),
                    Missing::Object,
                )
            })
            .await?;
        Ok(out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_owned())
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

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.policy
            .run("DeleteObject", key, SMALL_ATTEMPT, || {
                sent(
                    self.client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .send(),
                    Missing::Object,
                )
            })
            .await?;
        Ok(())
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
    ) -> Result<String, StoreError> {
        let part = copy_part_size(size, self.copy_threshold);
        let upload_id = self.start_multipart(to).await?;
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
                self.complete_multipart(to, &upload_id, etags, None).await
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

/// Counts every HTTP attempt by operation and status, with its latency to
/// the response headers, for the metrics endpoint.
#[derive(Debug)]
struct RequestMeter;

/// When the current attempt was handed to the HTTP client.
#[derive(Debug, Clone)]
struct AttemptStart(std::time::Instant);

impl Storable for AttemptStart {
    type Storer = StoreReplace<Self>;
}

impl Intercept for RequestMeter {
    fn name(&self) -> &'static str {
        "s3mount::RequestMeter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStart(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_transmit(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The response headers are here; bodies (listing XML, object data)
        // are not read yet, so this is the latency to the headers.
        record_attempt(cfg, Some(context.response().status().as_u16()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Still unrecorded: the attempt was sent but no response came.
        record_attempt(cfg, None);
        Ok(())
    }
}

/// Records the attempt started in `read_before_transmit`, once. An attempt
/// that failed before transmitting (signing, endpoint resolution) never
/// reached S3 and is not counted.
fn record_attempt(cfg: &mut ConfigBag, status: Option<u16>) {
    let Some(start) = cfg.load::<AttemptStart>().cloned() else {
        return;
    };
    cfg.interceptor_state().unset::<AttemptStart>();
    let operation = cfg.load::<Metadata>().map_or("Unknown", |m| m.name());
    crate::service::metrics::record_request(operation, status, start.0.elapsed());
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

/// The retry bound for a `--retry-timeout` value; zero means the default.
fn retry_bound(setting: Duration) -> Duration {
    if setting.is_zero() {
        Duration::from_secs(60)
    } else {
        setting
    }
}

/// A sent request's outcome in the store's terms.
async fn sent<T, E>(
    request: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    missing: Missing,
) -> Result<T, StoreError>
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    request.await.map_err(|e| classify(e, missing))
}

/// What a 404 means for the operation at hand.
#[derive(Clone, Copy)]
enum Missing {
    Bucket,
    Object,
}

fn classify<E>(err: SdkError<E, HttpResponse>, missing: Missing) -> StoreError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_owned();
            let message = se.err().message().unwrap_or("").to_owned();
            let detail = if code.is_empty() {
                format!("HTTP {status}")
            } else {
                code.clone()
            };
            // Some stores (Garage) answer a bad signature or an unknown key
            // with a plain AccessDenied; the message tells them apart.
            let lower = message.to_ascii_lowercase();
            let credential_problem = lower.contains("signature")
                || lower.contains("access key")
                || lower.contains("no such key")
                || lower.contains("invalid key");
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => StoreError::NoSuchBucket,
                (_, "NoSuchKey") => StoreError::NotFound,
                (404, _) => match missing {
                    Missing::Bucket => StoreError::NoSuchBucket,
                    Missing::Object => StoreError::NotFound,
                },
                (412, _) | (_, "PreconditionFailed") => StoreError::PreconditionFailed,
                (
                    _,
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "AuthorizationHeaderMalformed",
                ) => StoreError::BadCredentials(detail),
                (403, _) if credential_problem => {
                    StoreError::BadCredentials(format!("{detail}: {message}"))
                }
                (403, _) => StoreError::AccessDenied(detail),
                (503 | 429, _) | (_, "SlowDown" | "Throttling" | "ThrottlingException") => {
                    let retry_after = se
                        .raw()
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    StoreError::Throttled(format!("{detail}: {message}"), retry_after)
                }
                (500..=599, _) | (_, "RequestTimeout" | "InternalError") => {
                    StoreError::Unavailable(format!("{detail}: {message}"))
                }
                _ => StoreError::Other(format!("{detail}: {message}")),
            }
        }
        SdkError::TimeoutError(_) => StoreError::Timeout(root_cause(&err)),
        // The response arrived but could not be read or parsed (a body cut
        // short, a malformed listing page): worth another attempt.
        SdkError::ResponseError(_) => StoreError::Malformed(root_cause(&err)),
        SdkError::DispatchFailure(df) if df.is_timeout() => StoreError::Timeout(root_cause(&err)),
        SdkError::DispatchFailure(df) if df.is_io() => StoreError::Unreachable(root_cause(&err)),
        SdkError::DispatchFailure(_) => {
            let text = DisplayErrorContext(&err).to_string();
            if text.contains("credentials") {
                StoreError::NoCredentials(root_cause(&err))
            } else {
                StoreError::Unreachable(root_cause(&err))
            }
        }
        _ => StoreError::Other(DisplayErrorContext(&err).to_string()),
    }
}

/// The innermost error message: for network failures this is the OS error
/// ("Connection refused"), which is what a person can act on.
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    // Errors are reported on one line; some providers format theirs over several.
    current
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> SystemTime {
    let secs = t.secs();
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, t.subsec_nanos())
    } else {
        UNIX_EPOCH
    }
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

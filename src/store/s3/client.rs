//! Building the aws-sdk-s3 client: the credential and region chains (with
//! bounded instance-metadata timeouts, so a machine without IMDS does not
//! stall a mount), connect and header timeouts, `when_required` checksums
//! for stores that reject streaming ones, and the store's tuning settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::default_provider::region::DefaultRegionChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    ProvideCredentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider,
};

use super::classify::root_cause;
use super::request_meter::RequestMeter;
use super::{S3Store, SINGLE_COPY_LIMIT};
use crate::store::retry::{Congestion, RetryPolicy};
use crate::store::StoreError;

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

/// Connect timeout: an endpoint that does not accept a TCP connection in this
/// time is treated as unreachable rather than left to hang the caller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for response headers of one attempt.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

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
        let attempts = Arc::new(AtomicU64::new(0));
        let config = builder
            .interceptor(RequestMeter {
                attempts: attempts.clone(),
            })
            .build();
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
            attempts,
            upload_tokens: Default::default(),
            enforces_conditions: Default::default(),
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

    /// HTTP attempts sent so far, and of those the retries.
    pub fn requests_sent(&self) -> (u64, u64) {
        (
            self.attempts.load(Ordering::Relaxed),
            self.policy.retries.load(Ordering::Relaxed),
        )
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// The retry bound for a `--retry-timeout` value; zero means the default.
fn retry_bound(setting: Duration) -> Duration {
    if setting.is_zero() {
        Duration::from_secs(60)
    } else {
        setting
    }
}

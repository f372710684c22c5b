//! Counting S3 requests where they happen: an aws-sdk interceptor records
//! every HTTP attempt by operation and status, with its latency to the
//! response headers, through the `metrics` facade (the store knows nothing
//! of who exports them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

/// Counts every HTTP attempt by operation and status, with its latency to
/// the response headers, for the metrics endpoint.
#[derive(Debug)]
pub(super) struct RequestMeter {
    /// Attempts sent so far, for the store's own figures (the summary line).
    pub(super) attempts: Arc<AtomicU64>,
}

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
        self.record_attempt(cfg, Some(context.response().status().as_u16()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        _context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // Still unrecorded: the attempt was sent but no response came.
        self.record_attempt(cfg, None);
        Ok(())
    }
}

impl RequestMeter {
    /// Records the attempt started in `read_before_transmit`, once. An
    /// attempt that failed before transmitting (signing, endpoint
    /// resolution) never reached S3 and is not counted.
    fn record_attempt(&self, cfg: &mut ConfigBag, status: Option<u16>) {
        let Some(start) = cfg.load::<AttemptStart>().cloned() else {
            return;
        };
        cfg.interceptor_state().unset::<AttemptStart>();
        let operation = cfg
            .load::<Metadata>()
            .map_or("Unknown", |m| m.name())
            .to_owned();
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.attempts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "s3mount_s3_requests_total",
            "operation" => operation.clone(),
            "status" => status
        )
        .increment(1);
        metrics::histogram!("s3mount_s3_request_duration_seconds", "operation" => operation)
            .record(start.0.elapsed().as_secs_f64());
    }
}

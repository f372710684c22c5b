//! Operator-facing figures: Prometheus text on `--metrics-addr`, and the
//! one-line summary logged periodically for people without Prometheus.
//!
//! The layers record what happens where it happens through the `metrics`
//! facade (the store counts each HTTP attempt by operation and status, with
//! its latency); `metrics-exporter-prometheus` keeps and encodes them.
//! Everything else is read at scrape time from the counters the layers keep
//! anyway ([`Snapshot`]) and set just before encoding, so serving metrics
//! costs nothing until someone asks. hyper answers the scrapes.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{debug, warn};

use crate::byte_sizes::human_bytes;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's metrics recorder (once; later calls return the
/// same handle). Until it is installed, what the layers record is dropped
/// at no cost, so a mount without `--metrics-addr` never installs it.
pub fn install() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("s3mount_s3_request_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .expect("latency buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!("another metrics recorder is installed; s3mount's metrics stay empty");
        }
        describe_recorded();
        handle
    })
}

/// Help texts of the series the layers record themselves.
fn describe_recorded() {
    metrics::describe_counter!(
        "s3mount_s3_requests_total",
        "S3 HTTP requests (attempts) by operation and response status; status \"error\" means no response arrived."
    );
    metrics::describe_histogram!(
        "s3mount_s3_request_duration_seconds",
        "Time from sending an S3 request to its response headers, by operation."
    );
    metrics::describe_counter!(
        "s3mount_s3_retries_total",
        "S3 request attempts that repeated a failed attempt."
    );
    // Present from the first scrape on, as a counter that has not moved.
    metrics::counter!("s3mount_s3_retries_total").increment(0);
    for (name, kind, help, _) in series(&Snapshot::default()) {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
        }
    }
    metrics::describe_gauge!(
        "s3mount_conditional_writes",
        "1, labelled with whether the endpoint enforces S3 conditional writes (what claims across mounts rest on)."
    );
    metrics::describe_gauge!(
        "s3mount_dir_objects",
        "Objects (files) in each --count-dir directory, as of its listing."
    );
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Gauges and counters read from the layers at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Whether the endpoint enforces conditional writes (None: not probed,
    /// a read-only mount).
    pub conditional_writes: Option<bool>,
    /// S3 HTTP attempts sent, and of those the retries.
    pub requests_sent: u64,
    pub retries: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub bytes_read: u64,
    pub resumed_streams: u64,
    /// Disk cache of object data: hits, misses, bytes served and written,
    /// evictions and size (all zero without `--data-cache`).
    pub data_cache: [u64; 6],
    /// Objects the disk cache checked whole before the kernel read them.
    pub data_cache_files_checked: u64,
    /// Objects completed in the background after their last close, and
    /// the bytes that fetched.
    pub data_cache_completions: [u64; 2],
    /// Entries loaded from a `--catalog-snapshot` at start, and the
    /// snapshot's age now (seconds); `None` when none was loaded.
    pub catalog_snapshot: Option<(u64, f64)>,
    /// HEADs sent to learn objects' POSIX attributes, and symlink
    /// targets read with a GET.
    pub attr_heads: u64,
    pub symlink_reads: u64,
    /// READ requests the kernel sent the daemon.
    pub kernel_reads: u64,
    /// Opens the kernel reads itself from the disk cache (passthrough).
    pub passthrough_opens: u64,
    /// Requests allowed in flight (lowered while S3 throttles).
    pub request_limit: u64,
    /// 503 SlowDown / 429 answers seen.
    pub throttled: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bytes: u64,
    pub gets_queued: u64,
    pub gets_running: u64,
    /// Read-ahead GETs stopped because no reader wanted their data.
    pub gets_cancelled: u64,
    pub memory_budget: u64,
    pub memory_in_use: u64,
    pub open_read_handles: u64,
    pub open_write_handles: u64,
    pub uploads_in_flight: u64,
    pub uploads_completed: u64,
    pub uploads_failed: u64,
    pub upload_parts: u64,
    /// Bytes of changed files that S3 copied server-side (UploadPartCopy).
    pub upload_copied_bytes: u64,
    /// Bytes held in spool files by files being written.
    pub spool_bytes: u64,
    pub catalog_hits: u64,
    pub catalog_stale_hits: u64,
    pub catalog_misses: u64,
    pub catalog_disk_loads: u64,
    pub catalog_refreshes: u64,
    pub list_requests: u64,
    pub catalog_listings: u64,
    pub catalog_entries: u64,
    /// Inodes the kernel holds (the inode table's size).
    pub inodes: u64,
    /// Age in seconds of the oldest and newest listing held in memory.
    pub oldest_listing_age: f64,
    pub newest_listing_age: f64,
    /// `--count-dir` gauges: path → objects in it (None: not known yet).
    pub dir_objects: Vec<(String, Option<u64>)>,
    pub uptime: f64,
}

/// The Prometheus text exposition: what the layers recorded, plus `snap`
/// set just now.
pub fn render(handle: &PrometheusHandle, snap: &Snapshot) -> String {
    for (name, kind, _, value) in series(snap) {
        match kind {
            Kind::Counter => metrics::counter!(name).absolute(value as u64),
            Kind::Gauge => metrics::gauge!(name).set(value),
        }
    }
    for (path, count) in &snap.dir_objects {
        if let Some(n) = count {
            metrics::gauge!("s3mount_dir_objects", "path" => path.clone()).set(*n as f64);
        }
    }
    if let Some(enforced) = snap.conditional_writes {
        metrics::gauge!("s3mount_conditional_writes", "enforced" => enforced.to_string()).set(1.0);
    }
    handle.render()
}

/// Every single-valued series of `snap`: name, type, help, value.
fn series(snap: &Snapshot) -> [(&'static str, Kind, &'static str, f64); 49] {
    [
        (
            "s3mount_data_cache_hits_total",
            Kind::Counter,
            "Units of object data read from the --data-cache disk cache.",
            snap.data_cache[0] as f64,
        ),
        (
            "s3mount_data_cache_misses_total",
            Kind::Counter,
            "Units of object data not found (or found damaged) in the disk cache.",
            snap.data_cache[1] as f64,
        ),
        (
            "s3mount_data_cache_read_bytes_total",
            Kind::Counter,
            "Bytes of object data served from the disk cache.",
            snap.data_cache[2] as f64,
        ),
        (
            "s3mount_data_cache_written_bytes_total",
            Kind::Counter,
            "Bytes of object data written to the disk cache.",
            snap.data_cache[3] as f64,
        ),
        (
            "s3mount_data_cache_evictions_total",
            Kind::Counter,
            "Objects the disk cache evicted (least recently used first).",
            snap.data_cache[4] as f64,
        ),
        (
            "s3mount_data_cache_bytes",
            Kind::Gauge,
            "Bytes the disk cache holds.",
            snap.data_cache[5] as f64,
        ),
        (
            "s3mount_data_cache_files_checked_total",
            Kind::Counter,
            "Objects the disk cache checked whole against their checksums before the kernel read them itself.",
            snap.data_cache_files_checked as f64,
        ),
        (
            "s3mount_catalog_snapshot_entries_loaded",
            Kind::Gauge,
            "Listing entries the mount started from (--catalog-snapshot); 0 when it loaded none.",
            snap.catalog_snapshot.map_or(0.0, |s| s.0 as f64),
        ),
        (
            "s3mount_catalog_snapshot_age_seconds",
            Kind::Gauge,
            "Age of the catalog snapshot the mount started from; 0 when it loaded none.",
            snap.catalog_snapshot.map_or(0.0, |s| s.1),
        ),
        (
            "s3mount_data_cache_completions_total",
            Kind::Counter,
            "Objects the disk cache held mostly whose rest was fetched after their last close (--data-cache-complete), so the kernel reads them itself next time.",
            snap.data_cache_completions[0] as f64,
        ),
        (
            "s3mount_data_cache_completion_bytes_total",
            Kind::Counter,
            "Bytes fetched to complete mostly cached objects in the background.",
            snap.data_cache_completions[1] as f64,
        ),
        (
            "s3mount_attr_heads_total",
            Kind::Counter,
            "HEADs sent to learn the POSIX attributes (mode, owner, mtime) of objects this catalog did not know; one per object version, ever.",
            snap.attr_heads as f64,
        ),
        (
            "s3mount_symlink_target_reads_total",
            Kind::Counter,
            "Symlink targets read with a GET (once per version, then remembered).",
            snap.symlink_reads as f64,
        ),
        (
            "s3mount_kernel_read_requests_total",
            Kind::Counter,
            "READ requests the kernel sent the daemon (none for files it reads itself).",
            snap.kernel_reads as f64,
        ),
        (
            "s3mount_passthrough_opens_total",
            Kind::Counter,
            "Opens of files the data cache holds whole that the kernel reads itself (FUSE passthrough).",
            snap.passthrough_opens as f64,
        ),
        (
            "s3mount_s3_request_limit",
            Kind::Gauge,
            "S3 requests allowed in flight at once; lowered while S3 throttles, raised again when it stops.",
            snap.request_limit as f64,
        ),
        (
            "s3mount_s3_throttled_total",
            Kind::Counter,
            "S3 answers asking to slow down (503 SlowDown, 429).",
            snap.throttled as f64,
        ),
        (
            "s3mount_s3_bytes_received_total",
            Kind::Counter,
            "Bytes of object data received from S3.",
            snap.bytes_received as f64,
        ),
        (
            "s3mount_s3_bytes_sent_total",
            Kind::Counter,
            "Bytes of object data sent to S3 by uploads.",
            snap.bytes_sent as f64,
        ),
        (
            "s3mount_read_bytes_total",
            Kind::Counter,
            "Bytes returned to readers.",
            snap.bytes_read as f64,
        ),
        (
            "s3mount_read_resumed_streams_total",
            Kind::Counter,
            "Downloads resumed or retried after a broken connection, a stall or a 5xx.",
            snap.resumed_streams as f64,
        ),
        (
            "s3mount_cache_hits_total",
            Kind::Counter,
            "Block cache hits.",
            snap.cache_hits as f64,
        ),
        (
            "s3mount_cache_misses_total",
            Kind::Counter,
            "Block cache misses.",
            snap.cache_misses as f64,
        ),
        (
            "s3mount_cache_bytes",
            Kind::Gauge,
            "Bytes held in the block cache.",
            snap.cache_bytes as f64,
        ),
        (
            "s3mount_read_gets_running",
            Kind::Gauge,
            "Ranged GETs of file data holding one of the --max-concurrent-requests slots.",
            snap.gets_running as f64,
        ),
        (
            "s3mount_read_gets_queued",
            Kind::Gauge,
            "Ranged GETs of file data waiting for a slot.",
            snap.gets_queued as f64,
        ),
        (
            "s3mount_memory_budget_bytes",
            Kind::Gauge,
            "The memory budget (--memory-limit).",
            snap.memory_budget as f64,
        ),
        (
            "s3mount_memory_in_use_bytes",
            Kind::Gauge,
            "Budgeted memory in use: block cache plus read-ahead in flight.",
            snap.memory_in_use as f64,
        ),
        (
            "s3mount_open_read_handles",
            Kind::Gauge,
            "Files open for reading.",
            snap.open_read_handles as f64,
        ),
        (
            "s3mount_open_write_handles",
            Kind::Gauge,
            "Files open for writing.",
            snap.open_write_handles as f64,
        ),
        (
            "s3mount_uploads_in_flight",
            Kind::Gauge,
            "Uploads started and not yet completed or abandoned.",
            snap.uploads_in_flight as f64,
        ),
        (
            "s3mount_uploads_completed_total",
            Kind::Counter,
            "Uploads completed: the object is stored.",
            snap.uploads_completed as f64,
        ),
        (
            "s3mount_uploads_failed_total",
            Kind::Counter,
            "Uploads that failed: nothing was stored under the key.",
            snap.uploads_failed as f64,
        ),
        (
            "s3mount_upload_parts_total",
            Kind::Counter,
            "Multipart upload parts sent.",
            snap.upload_parts as f64,
        ),
        (
            "s3mount_read_gets_cancelled_total",
            Kind::Counter,
            "Read-ahead GETs stopped because no open reader wanted their data any more.",
            snap.gets_cancelled as f64,
        ),
        (
            "s3mount_upload_copied_bytes_total",
            Kind::Counter,
            "Bytes of changed files copied by S3 itself (UploadPartCopy) instead of being sent again.",
            snap.upload_copied_bytes as f64,
        ),
        (
            "s3mount_spool_bytes",
            Kind::Gauge,
            "Bytes held in the spool by files being written (bounded by --spool-limit).",
            snap.spool_bytes as f64,
        ),
        (
            "s3mount_catalog_hits_total",
            Kind::Counter,
            "Listings answered from memory or disk without asking S3.",
            snap.catalog_hits as f64,
        ),
        (
            "s3mount_catalog_stale_hits_total",
            Kind::Counter,
            "Of the hits, expired listings served while a refresh ran.",
            snap.catalog_stale_hits as f64,
        ),
        (
            "s3mount_catalog_misses_total",
            Kind::Counter,
            "Listings a caller had to wait for S3 for.",
            snap.catalog_misses as f64,
        ),
        (
            "s3mount_catalog_disk_loads_total",
            Kind::Counter,
            "Listings loaded from the on-disk catalog.",
            snap.catalog_disk_loads as f64,
        ),
        (
            "s3mount_catalog_refreshes_total",
            Kind::Counter,
            "Complete listings fetched from S3.",
            snap.catalog_refreshes as f64,
        ),
        (
            "s3mount_catalog_list_requests_total",
            Kind::Counter,
            "ListObjectsV2 pages requested.",
            snap.list_requests as f64,
        ),
        (
            "s3mount_catalog_listings",
            Kind::Gauge,
            "Directory listings held in memory.",
            snap.catalog_listings as f64,
        ),
        (
            "s3mount_catalog_entries",
            Kind::Gauge,
            "Entries of the listings held in memory.",
            snap.catalog_entries as f64,
        ),
        (
            "s3mount_inodes",
            Kind::Gauge,
            "Inodes known to the kernel (looked up and not yet forgotten).",
            snap.inodes as f64,
        ),
        (
            "s3mount_catalog_oldest_listing_age_seconds",
            Kind::Gauge,
            "Age of the oldest listing held in memory.",
            snap.oldest_listing_age,
        ),
        (
            "s3mount_catalog_newest_listing_age_seconds",
            Kind::Gauge,
            "Age of the newest listing held in memory.",
            snap.newest_listing_age,
        ),
        (
            "s3mount_uptime_seconds",
            Kind::Gauge,
            "Seconds since the mount went live.",
            snap.uptime,
        ),
    ]
}

/// The periodic one-line summary for the log.
pub fn summary(snap: &Snapshot) -> String {
    let hit_ratio = match snap.cache_hits + snap.cache_misses {
        0 => 0.0,
        n => snap.cache_hits as f64 / n as f64,
    };
    let mut line = format!(
        "requests={} retries={} resumes={} received={} sent={} read={} cache_hit_ratio={:.2} memory={}/{} open_read={} open_write={} uploads_in_flight={} listings={} list_requests={}",
        snap.requests_sent,
        snap.retries,
        snap.resumed_streams,
        human_bytes(snap.bytes_received),
        human_bytes(snap.bytes_sent),
        human_bytes(snap.bytes_read),
        hit_ratio,
        human_bytes(snap.memory_in_use),
        human_bytes(snap.memory_budget),
        snap.open_read_handles,
        snap.open_write_handles,
        snap.uploads_in_flight,
        snap.catalog_listings,
        snap.list_requests,
    );
    let [hits, misses, served, _, _, size] = snap.data_cache;
    if hits + misses + size > 0 {
        let _ = write!(
            line,
            " data_cache_hits={hits} data_cache_misses={misses} data_cache_read={} data_cache_size={}",
            human_bytes(served),
            human_bytes(size)
        );
    }
    for (path, count) in &snap.dir_objects {
        if let Some(n) = count {
            let _ = write!(line, " objects[{path}]={n}");
        }
    }
    line
}

/// Metrics connections served at once.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` until the runtime ends. `snapshot`
/// is called per scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) {
    let handle = install();
    // Scrapers come one at a time; a flood of connections waits here
    // instead of growing the daemon.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics endpoint cannot accept connections");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answer = hyper::service::service_fn(move |request: Request<_>| {
                let response = respond(request.uri().path(), handle, &*snapshot);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(conn), answer)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "metrics response not delivered");
            }
        });
    }
}

fn respond(
    path: &str,
    handle: &PrometheusHandle,
    snapshot: &(dyn Fn() -> Snapshot + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(handle, &snapshot()),
        ),
        "/" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "s3mount: metrics at /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found; try /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let handle = install();
        let op = "TestRenderOp";
        metrics::counter!("s3mount_s3_requests_total", "operation" => op, "status" => "200")
            .increment(1);
        metrics::counter!("s3mount_s3_requests_total", "operation" => op, "status" => "503")
            .increment(1);
        metrics::histogram!("s3mount_s3_request_duration_seconds", "operation" => op).record(0.03);
        metrics::histogram!("s3mount_s3_request_duration_seconds", "operation" => op).record(0.003);
        let snap = Snapshot {
            bytes_received: 42,
            dir_objects: vec![("incoming".into(), Some(7)), ("later".into(), None)],
            conditional_writes: Some(false),
            ..Snapshot::default()
        };
        let text = render(handle, &snap);
        assert!(text.contains("s3mount_conditional_writes{enforced=\"false\"} 1"));
        assert!(
            text.contains("s3mount_s3_requests_total{operation=\"TestRenderOp\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("s3mount_s3_requests_total{operation=\"TestRenderOp\",status=\"503\"} 1")
        );
        assert!(text.contains("# TYPE s3mount_s3_requests_total counter"));
        // Cumulative buckets: 3 ms is in le=0.005, 30 ms from le=0.05 on.
        assert!(text.contains(
            "s3mount_s3_request_duration_seconds_bucket{operation=\"TestRenderOp\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "s3mount_s3_request_duration_seconds_bucket{operation=\"TestRenderOp\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "s3mount_s3_request_duration_seconds_bucket{operation=\"TestRenderOp\",le=\"+Inf\"} 2"
        ));
        assert!(text
            .contains("s3mount_s3_request_duration_seconds_count{operation=\"TestRenderOp\"} 2"));
        assert!(text.contains("s3mount_s3_bytes_received_total 42"));
        assert!(
            text.contains("s3mount_s3_retries_total 0")
                || text.contains("s3mount_s3_retries_total ")
        );
        assert!(text.contains("s3mount_dir_objects{path=\"incoming\"} 7"));
        assert!(!text.contains("path=\"later\""));
        // Every series of the snapshot is there, with its help text.
        for (name, _, help, _) in series(&snap) {
            assert!(
                text.contains(&format!("# HELP {name} {help}")),
                "no help for {name}"
            );
        }
        // Every sample line belongs to a declared metric.
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "undeclared {name}"
            );
        }
    }

    #[test]
    fn summary_names_requests_and_sizes() {
        let snap = Snapshot {
            requests_sent: 12,
            retries: 3,
            bytes_received: 3 << 30,
            dir_objects: vec![("incoming".into(), Some(4))],
            ..Snapshot::default()
        };
        let line = summary(&snap);
        assert!(line.starts_with("requests=12 retries=3 "), "{line}");
        assert!(line.contains("received=3.0GiB"), "{line}");
        assert!(line.contains("objects[incoming]=4"), "{line}");
    }
}

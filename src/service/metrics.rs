//! Operator-facing figures: Prometheus text on `--metrics-addr`, and the
//! one-line summary logged periodically for people without Prometheus.
//!
//! S3 requests are counted where they happen (the store records each HTTP
//! attempt here, by operation and status). Everything else is read at scrape
//! time from the counters the layers keep anyway ([`Snapshot`]), so serving
//! metrics costs nothing until someone asks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use crate::byte_sizes::human_bytes;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), then +Inf.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct RequestCounts {
    /// (operation, status) → attempts; status is the HTTP code or `error`.
    by_status: BTreeMap<(String, String), u64>,
    /// Operation → time to the response headers.
    latency: BTreeMap<String, Histogram>,
    /// Attempts after the first of the same request.
    retries: u64,
}

static REQUESTS: LazyLock<Mutex<RequestCounts>> = LazyLock::new(Default::default);

/// Records one HTTP attempt of `operation` (`GetObject`, ...). `status` is
/// `None` when no response arrived (connect failure, timeout).
pub fn record_request(operation: &str, status: Option<u16>, latency: Duration) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    let mut counts = REQUESTS.lock();
    *counts
        .by_status
        .entry((operation.to_owned(), status))
        .or_default() += 1;
    counts
        .latency
        .entry(operation.to_owned())
        .or_default()
        .observe(latency.as_secs_f64());
}

/// Records that a failed request is about to be sent again.
pub fn record_retry() {
    REQUESTS.lock().retries += 1;
}

/// S3 requests sent so far (all operations, all outcomes).
pub fn total_requests() -> u64 {
    REQUESTS.lock().by_status.values().sum()
}

/// Gauges and counters read from the layers at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub bytes_read: u64,
    pub resumed_streams: u64,
    /// Disk cache of object data: hits, misses, bytes served and written,
    /// evictions and size (all zero without `--data-cache`).
    pub data_cache: [u64; 6],
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

/// The Prometheus text exposition of `snap` plus the request counters.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::with_capacity(8192);
    render_requests(&mut out);
    for (name, kind, help, value) in series(snap) {
        sample(&mut out, name, kind, help, value);
    }
    render_dir_objects(&mut out, &snap.dir_objects);
    out
}

/// The S3 request counters: attempts by status, latency histograms, retries.
fn render_requests(out: &mut String) {
    {
        let counts = REQUESTS.lock();
        header(out, "s3mount_s3_requests_total", "counter", "S3 HTTP requests (attempts) by operation and response status; status \"error\" means no response arrived.");
        for ((op, status), n) in &counts.by_status {
            let _ = writeln!(
                out,
                "s3mount_s3_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            out,
            "s3mount_s3_request_duration_seconds",
            "histogram",
            "Time from sending an S3 request to its response headers, by operation.",
        );
        for (op, h) in &counts.latency {
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i];
                let _ = writeln!(
                    out,
                    "s3mount_s3_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "s3mount_s3_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "s3mount_s3_request_duration_seconds_sum{{operation=\"{op}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "s3mount_s3_request_duration_seconds_count{{operation=\"{op}\"}} {}",
                h.count
            );
        }
        sample(
            out,
            "s3mount_s3_retries_total",
            "counter",
            "S3 request attempts that repeated a failed attempt.",
            counts.retries as f64,
        );
    }
}

/// Every single-valued series of `snap`: name, type, help, value.
fn series(snap: &Snapshot) -> [(&'static str, &'static str, &'static str, f64); 40] {
    [
        (
            "s3mount_data_cache_hits_total",
            "counter",
            "Units of object data read from the --data-cache disk cache.",
            snap.data_cache[0] as f64,
        ),
        (
            "s3mount_data_cache_misses_total",
            "counter",
            "Units of object data not found (or found damaged) in the disk cache.",
            snap.data_cache[1] as f64,
        ),
        (
            "s3mount_data_cache_read_bytes_total",
            "counter",
            "Bytes of object data served from the disk cache.",
            snap.data_cache[2] as f64,
        ),
        (
            "s3mount_data_cache_written_bytes_total",
            "counter",
            "Bytes of object data written to the disk cache.",
            snap.data_cache[3] as f64,
        ),
        (
            "s3mount_data_cache_evictions_total",
            "counter",
            "Files the disk cache evicted (least recently used first).",
            snap.data_cache[4] as f64,
        ),
        (
            "s3mount_data_cache_bytes",
            "gauge",
            "Bytes the disk cache holds.",
            snap.data_cache[5] as f64,
        ),
        (
            "s3mount_s3_request_limit",
            "gauge",
            "S3 requests allowed in flight at once; lowered while S3 throttles, raised again when it stops.",
            snap.request_limit as f64,
        ),
        (
            "s3mount_s3_throttled_total",
            "counter",
            "S3 answers asking to slow down (503 SlowDown, 429).",
            snap.throttled as f64,
        ),
        (
            "s3mount_s3_bytes_received_total",
            "counter",
            "Bytes of object data received from S3.",
            snap.bytes_received as f64,
        ),
        (
            "s3mount_s3_bytes_sent_total",
            "counter",
            "Bytes of object data sent to S3 by uploads.",
            snap.bytes_sent as f64,
        ),
        (
            "s3mount_read_bytes_total",
            "counter",
            "Bytes returned to readers.",
            snap.bytes_read as f64,
        ),
        (
            "s3mount_read_resumed_streams_total",
            "counter",
            "Downloads resumed or retried after a broken connection, a stall or a 5xx.",
            snap.resumed_streams as f64,
        ),
        (
            "s3mount_cache_hits_total",
            "counter",
            "Block cache hits.",
            snap.cache_hits as f64,
        ),
        (
            "s3mount_cache_misses_total",
            "counter",
            "Block cache misses.",
            snap.cache_misses as f64,
        ),
        (
            "s3mount_cache_bytes",
            "gauge",
            "Bytes held in the block cache.",
            snap.cache_bytes as f64,
        ),
        (
            "s3mount_read_gets_running",
            "gauge",
            "Ranged GETs of file data holding one of the --max-concurrent-requests slots.",
            snap.gets_running as f64,
        ),
        (
            "s3mount_read_gets_queued",
            "gauge",
            "Ranged GETs of file data waiting for a slot.",
            snap.gets_queued as f64,
        ),
        (
            "s3mount_memory_budget_bytes",
            "gauge",
            "The memory budget (--memory-limit).",
            snap.memory_budget as f64,
        ),
        (
            "s3mount_memory_in_use_bytes",
            "gauge",
            "Budgeted memory in use: block cache plus read-ahead in flight.",
            snap.memory_in_use as f64,
        ),
        (
            "s3mount_open_read_handles",
            "gauge",
            "Files open for reading.",
            snap.open_read_handles as f64,
        ),
        (
            "s3mount_open_write_handles",
            "gauge",
            "Files open for writing.",
            snap.open_write_handles as f64,
        ),
        (
            "s3mount_uploads_in_flight",
            "gauge",
            "Uploads started and not yet completed or abandoned.",
            snap.uploads_in_flight as f64,
        ),
        (
            "s3mount_uploads_completed_total",
            "counter",
            "Uploads completed: the object is stored.",
            snap.uploads_completed as f64,
        ),
        (
            "s3mount_uploads_failed_total",
            "counter",
            "Uploads that failed: nothing was stored under the key.",
            snap.uploads_failed as f64,
        ),
        (
            "s3mount_upload_parts_total",
            "counter",
            "Multipart upload parts sent.",
            snap.upload_parts as f64,
        ),
        (
            "s3mount_read_gets_cancelled_total",
            "counter",
            "Read-ahead GETs stopped because no open reader wanted their data any more.",
            snap.gets_cancelled as f64,
        ),
        (
            "s3mount_upload_copied_bytes_total",
            "counter",
            "Bytes of changed files copied by S3 itself (UploadPartCopy) instead of being sent again.",
            snap.upload_copied_bytes as f64,
        ),
        (
            "s3mount_spool_bytes",
            "gauge",
            "Bytes held in the spool by files being written (bounded by --spool-limit).",
            snap.spool_bytes as f64,
        ),
        (
            "s3mount_catalog_hits_total",
            "counter",
            "Listings answered from memory or disk without asking S3.",
            snap.catalog_hits as f64,
        ),
        (
            "s3mount_catalog_stale_hits_total",
            "counter",
            "Of the hits, expired listings served while a refresh ran.",
            snap.catalog_stale_hits as f64,
        ),
        (
            "s3mount_catalog_misses_total",
            "counter",
            "Listings a caller had to wait for S3 for.",
            snap.catalog_misses as f64,
        ),
        (
            "s3mount_catalog_disk_loads_total",
            "counter",
            "Listings loaded from the on-disk catalog.",
            snap.catalog_disk_loads as f64,
        ),
        (
            "s3mount_catalog_refreshes_total",
            "counter",
            "Complete listings fetched from S3.",
            snap.catalog_refreshes as f64,
        ),
        (
            "s3mount_catalog_list_requests_total",
            "counter",
            "ListObjectsV2 pages requested.",
            snap.list_requests as f64,
        ),
        (
            "s3mount_catalog_listings",
            "gauge",
            "Directory listings held in memory.",
            snap.catalog_listings as f64,
        ),
        (
            "s3mount_catalog_entries",
            "gauge",
            "Entries of the listings held in memory.",
            snap.catalog_entries as f64,
        ),
        (
            "s3mount_inodes",
            "gauge",
            "Inodes known to the kernel (looked up and not yet forgotten).",
            snap.inodes as f64,
        ),
        (
            "s3mount_catalog_oldest_listing_age_seconds",
            "gauge",
            "Age of the oldest listing held in memory.",
            snap.oldest_listing_age,
        ),
        (
            "s3mount_catalog_newest_listing_age_seconds",
            "gauge",
            "Age of the newest listing held in memory.",
            snap.newest_listing_age,
        ),
        (
            "s3mount_uptime_seconds",
            "gauge",
            "Seconds since the mount went live.",
            snap.uptime,
        ),
    ]
}

/// The `--count-dir` gauges, one per directory whose count is known.
fn render_dir_objects(out: &mut String, dirs: &[(String, Option<u64>)]) {
    if dirs.is_empty() {
        return;
    }
    header(
        out,
        "s3mount_dir_objects",
        "gauge",
        "Objects (files) in each --count-dir directory, as of its listing.",
    );
    for (path, count) in dirs {
        if let Some(n) = count {
            let _ = writeln!(
                out,
                "s3mount_dir_objects{{path=\"{}\"}} {n}",
                escape_label(path)
            );
        }
    }
}

/// The periodic one-line summary for the log.
pub fn summary(snap: &Snapshot) -> String {
    let hit_ratio = match snap.cache_hits + snap.cache_misses {
        0 => 0.0,
        n => snap.cache_hits as f64 / n as f64,
    };
    let mut line = format!(
        "requests={} retries={} resumes={} received={} sent={} read={} cache_hit_ratio={:.2} memory={}/{} open_read={} open_write={} uploads_in_flight={} listings={} list_requests={}",
        total_requests(),
        REQUESTS.lock().retries,
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

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Metrics connections served at once.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` until the runtime ends. `snapshot`
/// is called per scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) {
    // Scrapers come one at a time; a flood of connections waits here
    // instead of growing the daemon.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut conn, peer) = match listener.accept().await {
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
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Only the request line matters; read until the headers end.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n")
                    && !request.windows(2).any(|w| w == b"\n\n")
                    && request.len() < 16384
                {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&request);
            let target = line.split_whitespace().nth(1).unwrap_or("");
            let target = target.split('?').next().unwrap_or("");
            let (status, content_type, body) = match target {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    render(&snapshot()),
                ),
                "/" => (
                    "200 OK",
                    "text/plain; charset=utf-8",
                    "s3mount: metrics at /metrics\n".to_owned(),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    "not found; try /metrics\n".to_owned(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                debug!(%peer, error = %e, "metrics response not delivered");
            }
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        record_request("TestRenderOp", Some(200), Duration::from_millis(30));
        record_request("TestRenderOp", Some(503), Duration::from_millis(3));
        record_retry();
        let snap = Snapshot {
            bytes_received: 42,
            dir_objects: vec![("incoming".into(), Some(7)), ("later".into(), None)],
            ..Snapshot::default()
        };
        let text = render(&snap);
        assert!(
            text.contains("s3mount_s3_requests_total{operation=\"TestRenderOp\",status=\"200\"} 1")
        );
        assert!(
            text.contains("s3mount_s3_requests_total{operation=\"TestRenderOp\",status=\"503\"} 1")
        );
        // Cumulative buckets: 3 ms is in le=0.005, 30 ms from le=0.05 on.
        assert!(text.contains(
            "s3mount_s3_request_duration_seconds_bucket{operation=\"TestRenderOp\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "s3mount_s3_request_duration_seconds_bucket{operation=\"TestRenderOp\",le=\"0.05\"} 2"
        ));
        assert!(text
            .contains("s3mount_s3_request_duration_seconds_count{operation=\"TestRenderOp\"} 2"));
        assert!(text.contains("s3mount_s3_bytes_received_total 42"));
        assert!(text.contains("s3mount_dir_objects{path=\"incoming\"} 7"));
        assert!(!text.contains("path=\"later\""));
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
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
}

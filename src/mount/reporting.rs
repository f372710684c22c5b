//! What reports on a running mount: the metrics endpoint, the
//! `--count-dir` counters, the periodic summary line and the statistics
//! logged at unmount, all read from the layers' own counters.

use super::catalog_snapshot::SnapshotLoaded;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::cli::Args;
use crate::fs::S3Fs;
use crate::service::metrics::{self, Snapshot};
use crate::store::{ObjectStore, S3Store};

/// Starts what reports on the mount: the metrics endpoint, the
/// `--count-dir` counters and the periodic summary line.
pub(super) fn start_reporting(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    fs: &Arc<S3Fs<S3Store>>,
    store: &Arc<S3Store>,
    mountpoint: &Path,
    metrics_listener: Option<tokio::net::TcpListener>,
    snapshot_loaded: Option<SnapshotLoaded>,
) {
    let live_since = Instant::now();
    let count_dirs = Arc::new(CountDirs::new(&args.count_dir, mountpoint));
    let snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync> = {
        let (fs, store, count_dirs) = (fs.clone(), store.clone(), count_dirs.clone());
        let read_only = args.read_only;
        Arc::new(move || {
            let mut snap = snapshot(&fs, &store, &count_dirs, live_since, read_only);
            if let Some(loaded) = snapshot_loaded {
                snap.catalog_snapshot = Some((
                    loaded.entries,
                    SystemTime::now()
                        .duration_since(loaded.created)
                        .unwrap_or_default()
                        .as_secs_f64(),
                ));
            }
            snap
        })
    };
    let _guard = rt.enter();
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(listener, snapshot.clone()));
    }
    if !count_dirs.dirs.is_empty() {
        // Local changes show in the catalog at once; S3's changes come
        // with the TTL. With TTL 0 every count would be a new listing.
        let every = match args.metadata_ttl {
            0 => Duration::from_secs(5),
            ttl => Duration::from_secs(ttl.min(5)),
        };
        tokio::spawn(count_dirs.clone().keep_counting(fs.clone(), every));
    }
    if args.summary_interval > 0 {
        let every = Duration::from_secs(args.summary_interval);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                info!("summary: {}", metrics::summary(&snapshot()));
            }
        });
    }
}

pub(super) fn log_read_stats<S: ObjectStore>(fs: &S3Fs<S>, store: &S3Store) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = fs.catalog_stats();
    info!(
        list_requests = c.list_requests.load(Relaxed),
        hits = c.hits.load(Relaxed),
        stale_hits = c.stale_hits.load(Relaxed),
        disk_loads = c.disk_loads.load(Relaxed),
        misses = c.misses.load(Relaxed),
        refreshes = c.refreshes.load(Relaxed),
        "catalog statistics"
    );
    let stats = fs.read_stats();
    let fetched = stats.fetched_bytes.load(Relaxed);
    let served = stats.served_bytes.load(Relaxed);
    info!(
        gets = stats.requests.load(Relaxed),
        fetched_bytes = fetched,
        served_bytes = served,
        amplification = if served > 0 {
            fetched as f64 / served as f64
        } else {
            0.0
        },
        block_hits = stats.block_hits.load(Relaxed),
        block_misses = stats.block_misses.load(Relaxed),
        resumes = store.resumes(),
        "read statistics"
    );
}

/// The figures the metrics endpoint and the summary line show.
fn snapshot<S: ObjectStore>(
    fs: &S3Fs<S>,
    store: &S3Store,
    count_dirs: &CountDirs,
    live_since: Instant,
    read_only: bool,
) -> Snapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let read = fs.read_stats();
    let catalog = fs.catalog_stats();
    let uploads = fs.upload_stats();
    let memory = fs.memory();
    let listings = fs.listing_summary();
    let started = uploads.started.load(Relaxed);
    let ended = uploads.completed.load(Relaxed)
        + uploads.failed.load(Relaxed)
        + uploads.abandoned.load(Relaxed);
    let (requests_sent, retries) = store.requests_sent();
    Snapshot {
        conditional_writes: (!read_only).then(|| store.enforces_conditions()),
        requests_sent,
        retries,
        bytes_received: read.fetched_bytes.load(Relaxed),
        bytes_sent: uploads.bytes.load(Relaxed),
        bytes_read: read.served_bytes.load(Relaxed),
        resumed_streams: store.resumes(),
        data_cache: fs.data_cache_stats().map_or([0; 6], |d| {
            [
                d.hits.load(Relaxed),
                d.misses.load(Relaxed),
                d.bytes_served.load(Relaxed),
                d.bytes_written.load(Relaxed),
                d.evictions.load(Relaxed),
                d.size.load(Relaxed),
            ]
        }),
        data_cache_files_checked: fs
            .data_cache_stats()
            .map_or(0, |d| d.files_checked.load(Relaxed)),
        catalog_snapshot: None,
        data_cache_completions: fs.data_cache_stats().map_or([0; 2], |d| {
            [
                d.completions.load(Relaxed),
                d.completion_bytes.load(Relaxed),
            ]
        }),
        attr_heads: fs.attr_stats().heads.load(Relaxed),
        symlink_reads: fs.attr_stats().link_reads.load(Relaxed),
        kernel_reads: read.kernel_reads.load(Relaxed),
        passthrough_opens: read.passthrough_opens.load(Relaxed),
        request_limit: store.congestion().0 as u64,
        throttled: store.congestion().1,
        cache_hits: read.block_hits.load(Relaxed),
        cache_misses: read.block_misses.load(Relaxed),
        cache_bytes: memory.cache,
        gets_queued: read.gets_queued.load(Relaxed),
        gets_running: read.gets_running.load(Relaxed),
        gets_cancelled: read.cancelled_gets.load(Relaxed),
        memory_budget: memory.budget,
        memory_in_use: memory.cache + memory.ahead,
        open_read_handles: fs.open_files() as u64,
        open_write_handles: fs.open_writers() as u64,
        uploads_in_flight: started.saturating_sub(ended),
        uploads_completed: uploads.completed.load(Relaxed),
        uploads_failed: uploads.failed.load(Relaxed),
        upload_parts: uploads.parts.load(Relaxed),
        upload_copied_bytes: uploads.copied_bytes.load(Relaxed),
        spool_bytes: fs.spool_used(),
        catalog_hits: catalog.hits.load(Relaxed),
        catalog_stale_hits: catalog.stale_hits.load(Relaxed),
        catalog_misses: catalog.misses.load(Relaxed),
        catalog_disk_loads: catalog.disk_loads.load(Relaxed),
        catalog_refreshes: catalog.refreshes.load(Relaxed),
        list_requests: catalog.list_requests.load(Relaxed),
        catalog_listings: listings.listings,
        catalog_entries: listings.entries,
        inodes: fs.inode_count() as u64,
        oldest_listing_age: listings.oldest_age.as_secs_f64(),
        newest_listing_age: listings.newest_age.as_secs_f64(),
        dir_objects: count_dirs.current(),
        uptime: live_since.elapsed().as_secs_f64(),
    }
}

/// The `--count-dir` gauges: files per directory, re-read from the catalog
/// every few seconds (the catalog itself asks S3 again at the metadata TTL,
/// and changes made through the mount show at once).
struct CountDirs {
    /// (path below the mount root, as given; last count).
    dirs: Vec<(String, String, parking_lot::Mutex<Option<u64>>)>,
}

impl CountDirs {
    fn new(paths: &[String], mountpoint: &Path) -> Self {
        let mut seen = std::collections::HashSet::new();
        let dirs = paths
            .iter()
            // The same directory twice would be a duplicate series, which
            // makes Prometheus reject the whole scrape.
            .filter(|given| seen.insert(given.as_str()))
            .map(|given| {
                // Accept paths inside the mountpoint as well as relative ones.
                let relative = Path::new(given)
                    .strip_prefix(mountpoint)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| given.clone());
                let relative = relative.trim_matches('/').to_owned();
                (given.clone(), relative, parking_lot::Mutex::new(None))
            })
            .collect();
        CountDirs { dirs }
    }

    fn current(&self) -> Vec<(String, Option<u64>)> {
        self.dirs
            .iter()
            .map(|(given, _, count)| (given.clone(), *count.lock()))
            .collect()
    }

    async fn keep_counting<S: ObjectStore>(self: Arc<Self>, fs: Arc<S3Fs<S>>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            for (given, relative, count) in &self.dirs {
                match fs.count_files(relative).await {
                    Ok(n) => *count.lock() = Some(n),
                    Err(e) => {
                        debug!(path = %given, error = %e, "cannot count --count-dir");
                        *count.lock() = None;
                    }
                }
            }
        }
    }
}

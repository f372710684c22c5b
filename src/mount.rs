//! Mounting: checks that fail early and clearly, then the session lifecycle.
//!
//! Nothing is mounted until the mountpoint, the credentials, the endpoint and
//! the bucket have all been checked; each failure is one line naming the
//! problem and the fix. Once mounted, SIGINT/SIGTERM unmount and exit 0, and
//! an external `umount` ends the daemon with exit 0 too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{MountOption, SessionACL};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::catalog::{Catalog, CatalogDb, Freshness, IN_MEMORY_LIMIT};
use crate::cli::{Args, Target};
use crate::fs::{Ownership, S3Fs, WritePolicy};
use crate::fuse::FuseAdapter;
use crate::read::disk_cache::DiskCache;
use crate::read::{ReadConfig, Reader};
use crate::service::kernel_mount::{self, KernelOptions};
use crate::service::metrics::{self, Snapshot};
use crate::service::notify;
use crate::store::{ObjectStore, S3Settings, S3Store};
use crate::write::{UploadConfig, Uploads};

pub use crate::preflight::MountError;
use crate::preflight::{check_mountpoint, preflight};

/// How long an unmount waits for the request loop to finish.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);

/// Mounts according to `args` and serves until unmounted or signalled.
/// `on_ready` runs once the mount answers requests.
pub fn run(args: Args, on_ready: impl FnOnce()) -> Result<(), MountError> {
    let target = Target::parse(&args.target).map_err(MountError)?;
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("s3mount-io")
        .enable_all()
        .build()
        .map_err(|e| MountError(format!("cannot start the I/O runtime: {e}")))?;

    let settings = S3Settings {
        idle_timeout: Duration::from_secs(args.read_stall_timeout.max(1)),
        multipart_copy_threshold: args.multipart_copy_threshold,
        retry_timeout: Duration::from_secs(args.retry_timeout.max(1)),
        // Room for every read and upload request the layers allow, plus
        // listings, so only throttling ever makes a request wait here.
        max_requests: args.max_concurrent_requests.max(1) * 2 + 64,
        ..args.connection.settings(&target.bucket)
    };
    let read_config = read_config(&args)?;
    let mut upload_config = upload_config(&args)?;
    let data_cache = open_data_cache(&args, &target)?;
    upload_config.data_cache = data_cache.clone();
    upload_config.cache_segment = read_config.window.block * crate::read::SEGMENT_BLOCKS;
    let store = Arc::new(rt.block_on(preflight(&settings, &target))?);

    let fs = build_layers(
        &args,
        &target,
        &store,
        (read_config, data_cache),
        upload_config,
    );
    // Signal handlers go in before the mount goes live, so a signal that
    // arrives right after it still unmounts cleanly; the metrics port is
    // taken before mounting, so a port in use is a clear error and not a
    // mount without metrics.
    let (mut sigterm, mut sigint) = signal_handlers(&rt)?;
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(bind_metrics(&rt, addr)?),
        None => None,
    };

    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let (session, mut unmount) = mount_session(adapter, &args, &target, &mountpoint)?;
    let done_rx = spawn_request_loop(session, &mountpoint)?;
    if args.kernel_readahead > 0 {
        set_kernel_readahead(&mountpoint, args.kernel_readahead);
    }
    // Started once the mount answers (the watchdog needs its device number).
    let watchdog = if args.auto_unmount {
        let started = kernel_mount::device_of(&mountpoint)
            .and_then(|dev| kernel_mount::start_watchdog(&mountpoint, dev));
        match started {
            Ok(w) => Some(w),
            Err(e) => {
                let _ = unmount(true);
                return Err(MountError(format!(
                    "cannot start the --auto-unmount watchdog: {e}; mount without --auto-unmount"
                )));
            }
        }
    } else {
        None
    };
    start_reporting(&rt, &args, &fs, &store, &mountpoint, metrics_listener);
    info!(target = %store.describe(), prefix = %target.prefix, mountpoint = %mountpoint.display(), "mounted");
    notify::ready(&format!(
        "Mounted {}/{} at {}",
        target.bucket,
        target.prefix,
        mountpoint.display()
    ));
    on_ready();

    let abnormal_end = rt.block_on(serve_until_end(
        &fs,
        &store,
        done_rx,
        (&mut sigterm, &mut sigint),
        &mut unmount,
    ));
    if let Some(why) = abnormal_end {
        // The watchdog stays armed: it detaches the mount if the lazy
        // unmount above did not.
        rt.shutdown_timeout(Duration::from_secs(1));
        return Err(MountError(format!(
            "the request loop ended abnormally ({why}); the mount was detached"
        )));
    }
    // Every way out of here has unmounted (or lazily detached) the mount:
    // the watchdog must not touch the path again, whatever is there now.
    if let Some(watchdog) = watchdog {
        watchdog.disarm();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// SIGTERM and SIGINT, to be awaited by [`serve_until_end`].
fn signal_handlers(rt: &tokio::runtime::Runtime) -> Result<Signals, MountError> {
    let _guard = rt.enter();
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(t), Ok(i)) => Ok((t, i)),
        (Err(e), _) | (_, Err(e)) => {
            Err(MountError(format!("cannot install signal handlers: {e}")))
        }
    }
}

fn bind_metrics(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, MountError> {
    let _guard = rt.enter();
    std::net::TcpListener::bind(addr)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(|e| {
            MountError(format!(
                "cannot serve metrics on {addr}: {e}; choose a free address with --metrics-addr"
            ))
        })
}

/// Undoes the mount; `true` detaches lazily.
type Unmount = Box<dyn FnMut(bool) -> std::io::Result<()> + Send>;

/// Mounts the filesystem: mount(2) of /dev/fuse directly when root (so the
/// mount says `fuse.s3mount`), through fuser and fusermount3 otherwise.
/// Returns the session and how to undo the mount.
fn mount_session<S: ObjectStore>(
    adapter: FuseAdapter<S>,
    args: &Args,
    target: &Target,
    mountpoint: &Path,
) -> Result<(fuser::Session<FuseAdapter<S>>, Unmount), MountError> {
    let config = session_config(args, target);
    let mount_failed = |e: std::io::Error| {
        MountError(format!(
            "cannot mount at {}: {e}; check that /dev/fuse exists and that you may mount (root, or fusermount3 installed)",
            mountpoint.display()
        ))
    };
    let source = format!("{}/{}", target.bucket, target.prefix);
    let (mut session, direct) = if kernel_mount::can_mount_directly() {
        let kernel = KernelOptions {
            source: &source,
            read_only: args.read_only,
            allow_other: config.acl != SessionACL::Owner,
        };
        let device = kernel_mount::attach(mountpoint, &kernel).map_err(mount_failed)?;
        let acl = config.acl;
        match fuser::Session::from_fd(adapter, device, acl, config) {
            Ok(session) => (session, true),
            Err(e) => {
                let _ = kernel_mount::detach(mountpoint, true);
                return Err(mount_failed(e));
            }
        }
    } else {
        (
            fuser::Session::new(adapter, mountpoint, &config).map_err(mount_failed)?,
            false,
        )
    };
    let mut unmounter = session.unmount_callable();
    let mountpoint = mountpoint.to_path_buf();
    // fuser unmounts what it mounted; a direct mount, or a lazy detach of
    // either kind, is ours to undo.
    let unmount = move |lazy: bool| -> std::io::Result<()> {
        if direct || lazy {
            kernel_mount::detach(&mountpoint, lazy)
        } else {
            unmounter.unmount()
        }
    };
    Ok((session, Box::new(unmount)))
}

/// How the request loop ended: `Ok` when the kernel closed the session.
type LoopEnd = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Runs the kernel request loop on its own thread.
fn spawn_request_loop<S: ObjectStore>(
    session: fuser::Session<FuseAdapter<S>>,
    mountpoint: &Path,
) -> Result<LoopEnd, MountError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-loop".into())
        .spawn(move || {
            // A panic here would otherwise end the loop silently; it is an
            // abnormal end like an error, reported by `serve_until_end`.
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.run()))
                .map_err(|_| "the request loop panicked".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let _ = done_tx.send(ended);
        })
        .map_err(|e| {
            let _ = kernel_mount::detach(mountpoint, true);
            MountError(format!("cannot start the request loop: {e}"))
        })?;
    Ok(done_rx)
}

/// Starts what reports on the mount: the metrics endpoint, the
/// `--count-dir` counters and the periodic summary line.
fn start_reporting(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    fs: &Arc<S3Fs<S3Store>>,
    store: &Arc<S3Store>,
    mountpoint: &Path,
    metrics_listener: Option<tokio::net::TcpListener>,
) {
    let live_since = Instant::now();
    let count_dirs = Arc::new(CountDirs::new(&args.count_dir, mountpoint));
    let snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync> = {
        let (fs, store, count_dirs) = (fs.clone(), store.clone(), count_dirs.clone());
        Arc::new(move || snapshot(&fs, &store, &count_dirs, live_since))
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

/// The FUSE session's options: source name, subtype, read-only or not,
/// and who besides the mounting user may enter.
fn session_config(args: &Args, target: &Target) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("{}/{}", target.bucket, target.prefix)),
        MountOption::Subtype("s3mount".into()),
        if args.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else if args.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config
}

/// Serves until the mount ends: unmounted from outside (`None`), a signal
/// (writes refused, uploads settled, unmounted: `None`), or an abnormal end
/// of the request loop (detached: `Some(why)`).
async fn serve_until_end(
    fs: &S3Fs<S3Store>,
    store: &S3Store,
    mut done_rx: tokio::sync::oneshot::Receiver<Result<(), String>>,
    (sigterm, sigint): (
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
    ),
    unmount: &mut impl FnMut(bool) -> std::io::Result<()>,
) -> Option<String> {
    let reason = tokio::select! {
        finished = &mut done_rx => {
            log_read_stats(fs, store);
            let why = match finished {
                Ok(Ok(())) => {
                    info!("unmounted externally; exiting");
                    return None;
                }
                Ok(Err(e)) => e,
                Err(_) => "the request loop ended without a word".to_owned(),
            };
            // The mount is still there but nobody answers it: detach
            // it, and leave the watchdog armed in case that fails.
            error!(error = %why, "the request loop ended abnormally; unmounting");
            fs.stop_writes();
            let _ = tokio::time::timeout(UNMOUNT_GRACE, fs.abort_uploads()).await;
            if let Err(e) = unmount(true) {
                warn!(error = %e, "lazy unmount failed");
            }
            return Some(why);
        }
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    info!(signal = reason, open_files = fs.open_files(), "unmounting");
    notify::stopping(&format!("Unmounting after {reason}"));
    // No new writes from here on. Uploads whose file is closed finish
    // completing; those still open cannot complete once the mount is
    // gone and are aborted, so nothing is left half-done in the bucket.
    fs.stop_writes();
    if tokio::time::timeout(UNMOUNT_GRACE, fs.abort_uploads())
        .await
        .is_err()
    {
        warn!("aborting uploads in flight took too long; lifecycle rules will clean up");
    }
    log_read_stats(fs, store);
    if let Err(e) = unmount(false) {
        warn!(error = %e, "unmount failed (busy?); detaching lazily");
        if let Err(e) = unmount(true) {
            warn!(error = %e, "lazy unmount failed");
        }
        return None;
    }
    if tokio::time::timeout(UNMOUNT_GRACE, done_rx).await.is_err() {
        warn!("request loop did not finish after unmount; exiting anyway");
    }
    None
}

/// The filesystem's layers over `store`: catalog (with its on-disk
/// database), read path and write path, with the ownership and write policy
/// the options ask for.
fn build_layers(
    args: &Args,
    target: &Target,
    store: &Arc<S3Store>,
    (read_config, data_cache): (ReadConfig, Option<Arc<DiskCache>>),
    upload_config: UploadConfig,
) -> Arc<S3Fs<S3Store>> {
    let owner = Ownership {
        uid: args.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
        gid: args.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw()),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
    };
    let freshness = Freshness {
        ttl: Duration::from_secs(args.metadata_ttl),
        serve_stale: args.stale_while_revalidate,
    };
    let db = cache_dir(args).and_then(|dir| {
        let identity = format!("{}|{}|{}", store.endpoint(), target.bucket, target.prefix);
        CatalogDb::open(&dir, &identity)
    });
    // Listings in memory get a sixteenth of the budget (about 160 bytes an
    // entry), out of the quarter the read path leaves for other memory.
    let listing_entries = (args.memory_limit / 16 / 160).max(IN_MEMORY_LIMIT as u64 * 2);
    let catalog = Catalog::new(
        store.clone(),
        &target.prefix,
        freshness,
        db,
        listing_entries,
    );
    let policy = WritePolicy {
        read_only: args.read_only,
        no_delete: args.no_delete,
        no_overwrite: args.no_overwrite,
    };
    Arc::new(S3Fs::new(
        catalog,
        Reader::new(store.clone(), read_config, data_cache),
        Uploads::new(store.clone(), upload_config),
        policy,
        owner,
    ))
}

/// The disk cache of object data, when `--data-cache` asks for one.
fn open_data_cache(args: &Args, target: &Target) -> Result<Option<Arc<DiskCache>>, MountError> {
    let Some(dir) = &args.data_cache else {
        if args.data_cache_size.is_some() {
            return Err(MountError(
                "--data-cache-size needs --data-cache DIR; give the directory to cache in".into(),
            ));
        }
        return Ok(None);
    };
    DiskCache::open(dir, &target.bucket, args.data_cache_size.unwrap_or(0))
        .map(Some)
        .map_err(|e| {
            MountError(format!(
                "cannot use {} as the data cache: {e}; give a writable directory with --data-cache",
                dir.display()
            ))
        })
}

/// The read path's settings, checked for combinations that cannot work.
fn read_config(args: &Args) -> Result<ReadConfig, MountError> {
    let mut config = ReadConfig {
        part_size: args.read_part_size,
        max_requests: args.max_concurrent_requests.max(1),
        memory_limit: args.memory_limit,
        ..ReadConfig::default()
    };
    config.window.max_window = args.max_read_window.max(config.window.initial_window);
    config.window.small_object = args.small_object_size;
    if args.memory_limit < 16 * 1024 * 1024 {
        return Err(MountError(format!(
            "--memory-limit {} is too small; give at least 16M",
            args.memory_limit
        )));
    }
    if args.read_part_size < config.window.block {
        return Err(MountError(format!(
            "--read-part-size must be at least {} bytes",
            config.window.block
        )));
    }
    Ok(config)
}

/// The write path's settings; creates the spool directory.
fn upload_config(args: &Args) -> Result<UploadConfig, MountError> {
    if args.write_part_size < 5 << 20 || args.write_part_size > 2 << 30 {
        return Err(MountError(format!(
            "--write-part-size {} is outside S3's limits; give a size from 5M to 2G",
            args.write_part_size
        )));
    }
    let spool_dir = match (&args.spool_dir, cache_dir(args)) {
        (Some(dir), _) => dir.clone(),
        (None, Some(cache)) => cache.join("spool"),
        (None, None) => std::env::temp_dir(),
    };
    if !args.read_only {
        crate::private_dir::create_private_dir(&spool_dir).map_err(|e| {
            MountError(format!(
                "cannot create the upload spool directory {}: {e}; give a writable one with --spool-dir",
                spool_dir.display()
            ))
        })?;
    }
    Ok(UploadConfig {
        part_size: args.write_part_size,
        spool_dir,
        max_parts_in_flight: 8,
        max_concurrent_parts: (args.max_concurrent_requests / 2).max(4),
        spool_limit: args.spool_limit,
        max_modify_size: args.max_modify_size,
        data_cache: None,
        cache_segment: 0,
    })
}

/// The directory for the persistent catalog, if any.
fn cache_dir(args: &Args) -> Option<PathBuf> {
    match &args.cache_dir {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir.clone()),
        // Mounted from fstab at boot there is no HOME; root then keeps
        // its catalog where system services keep caches.
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty() && h != "/")
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .or_else(|| kernel_mount::can_mount_directly().then(|| PathBuf::from("/var/cache")))
            .map(|base| base.join("s3mount")),
    }
}

fn log_read_stats<S: ObjectStore>(fs: &S3Fs<S>, store: &S3Store) {
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

/// Raises the kernel's readahead for this mount, so sequential readers get
/// FUSE reads of up to 1 MiB instead of 128 KiB (fewer requests, less CPU).
/// Best effort: it needs root, and the mount works without it.
fn set_kernel_readahead(mountpoint: &Path, bytes: u64) {
    use std::os::unix::fs::MetadataExt;
    // The request loop is running, so this stat is answered.
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, format!("{}", bytes / 1024)) {
        debug!(path, error = %e, "cannot set kernel readahead; keeping the default");
    }
}

/// The figures the metrics endpoint and the summary line show.
fn snapshot<S: ObjectStore>(
    fs: &S3Fs<S>,
    store: &S3Store,
    count_dirs: &CountDirs,
    live_since: Instant,
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
    Snapshot {
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

//! Mounting: checks that fail early and clearly, then the session lifecycle.
//!
//! Nothing is mounted until the mountpoint, the credentials, the endpoint and
//! the bucket have all been checked (`preflight`); each failure is one line
//! naming the problem and the fix (`MountError`). The layers are built from
//! the options (`layers`), the session is mounted and served here, and what
//! reports on it runs beside it (`reporting`). Once mounted, SIGINT/SIGTERM
//! unmount and exit 0, and an external `umount` ends the daemon with exit 0
//! too.

mod catalog_snapshot;
mod error;
pub(crate) mod layers;
pub mod preflight;
mod reporting;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::cli::{Args, Target};
use crate::fs::S3Fs;
use crate::fuse::FuseAdapter;
use crate::service::kernel_mount::{self, KernelOptions};
use crate::service::notify;
use crate::store::{ObjectStore, S3Settings, S3Store};

pub use error::MountError;
use layers::{build_layers, open_data_cache, read_config, upload_config};
use preflight::{check_mountpoint, preflight};
use reporting::{log_read_stats, start_reporting};

/// How long an unmount waits for the request loop to finish.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);

/// Mounts according to `args` and serves until unmounted or signalled.
/// `on_ready` runs once the mount answers requests.
pub fn run(args: Args, on_ready: impl FnOnce()) -> Result<(), MountError> {
    let target = Target::parse(&args.target).map_err(MountError)?;
    if args.metrics_addr.is_some() {
        // Before the first request, so preflight's requests are counted too.
        crate::service::metrics::install();
    }
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("s3mount-io")
        // A rename of a big file open for writing nests many futures (the
        // writer's lock, the claim protocol, a copy in parts, the SDK's
        // requests); unoptimised builds overflowed tokio's 2 MiB default.
        // Only touched pages take memory.
        .thread_stack_size(8 << 20)
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
    if !args.read_only {
        rt.block_on(check_conditional_writes(&store, &target, &args))?;
    }

    let db = layers::open_catalog_db(&args, &target, &store);
    let snapshot_loaded = match (&args.catalog_snapshot, &db) {
        (Some(url), Some(db)) => rt.block_on(catalog_snapshot::load_catalog_snapshot(
            &args, &target, &store, db, url,
        )),
        (Some(url), None) => {
            warn!(snapshot = %url, "the catalog is kept in memory only (--cache-dir none, or in use); the snapshot is not loaded");
            None
        }
        _ => None,
    };
    let fs = build_layers(
        &args,
        &target,
        &store,
        db,
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

    let passthrough = args.data_cache.is_some() && !args.no_passthrough;
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone(), passthrough);
    let notifier = adapter.kernel_notifier();
    if args.max_fuse_request > 0 {
        raise_fuse_request_limit(args.max_fuse_request);
    }
    let (session, mut unmount) = mount_session(adapter, &args, &target, &mountpoint)?;
    let _ = notifier.set(session.notifier());
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
    start_reporting(
        &rt,
        &args,
        &fs,
        &store,
        &mountpoint,
        metrics_listener,
        snapshot_loaded,
    );
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

/// Finds out whether the endpoint enforces write conditions (what claims and
/// create-only files across mounts rest on), says so, and refuses to mount
/// without them when `--require-conditional-writes` asks.
async fn check_conditional_writes(
    store: &S3Store,
    target: &Target,
    args: &Args,
) -> Result<(), MountError> {
    let enforced = match store.probe_conditions(&target.prefix).await {
        Ok(enforced) => enforced,
        Err(e) => {
            warn!(error = %e, "cannot find out whether the endpoint enforces conditional writes; assuming it does not");
            false
        }
    };
    if enforced {
        info!("the endpoint enforces conditional writes: renames are claims one mount wins, O_EXCL creates are create-only across mounts");
        return Ok(());
    }
    if args.require_conditional_writes {
        return Err(MountError(format!(
            "{} ignores S3 conditional writes (If-None-Match/If-Match), which --require-conditional-writes asks for; use an endpoint that enforces them (AWS S3, SeaweedFS) or mount without the option (then run one loader per prefix)",
            store.endpoint()
        )));
    }
    warn!("the endpoint ignores conditional writes: two mounts renaming the same file may both succeed; run one loader per prefix (docs/SEMANTICS.md, Claims)");
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
            let _ = tokio::time::timeout(UNMOUNT_GRACE, fs.drop_claim_locks()).await;
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
    if tokio::time::timeout(UNMOUNT_GRACE, fs.drop_claim_locks())
        .await
        .is_err()
    {
        warn!("deleting the claim locks kept took too long; they are broken after their lease");
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

/// Raises the kernel's ceiling on the size of one FUSE request
/// (`fs.fuse.max_pages_limit`, 256 pages = 1 MiB by default) to `bytes`
/// (`--max-fuse-request`) before mounting, since the kernel reads it when the
/// mount starts. A read of a column chunk on a direct-I/O handle then
/// reaches the daemon whole, and is fetched in parallel parts, instead of as
/// 1 MiB pieces the kernel sends one after the other, each waiting a round
/// trip. It only raises a ceiling: every FUSE filesystem still gets at most
/// what it asks for. Best effort: it needs root, and the mount works
/// without it.
fn raise_fuse_request_limit(bytes: u64) {
    const LIMIT: &str = "/proc/sys/fs/fuse/max_pages_limit";
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p.max(4096) as u64);
    let wanted = bytes.div_ceil(page).min(u32::MAX as u64) as u32;
    let Ok(now) = std::fs::read_to_string(LIMIT) else {
        return;
    };
    let Ok(now) = now.trim().parse::<u32>() else {
        return;
    };
    if now >= wanted {
        return;
    }
    match std::fs::write(LIMIT, wanted.to_string()) {
        Ok(()) => info!(
            from = now,
            to = wanted,
            "raised fs.fuse.max_pages_limit so large reads reach the daemon whole"
        ),
        Err(e) => {
            debug!(error = %e, pages = now, "cannot raise fs.fuse.max_pages_limit; FUSE requests stay as small")
        }
    }
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

//! Mounting: checks that fail early and clearly, then the session lifecycle.
//!
//! Nothing is mounted until the mountpoint, the credentials, the endpoint and
//! the bucket have all been checked; each failure is one line naming the
//! problem and the fix. Once mounted, SIGINT/SIGTERM unmount and exit 0, and
//! an external `umount` ends the daemon with exit 0 too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, CatalogDb, Freshness};
use crate::cli::{Args, ChecksumMode, Target};
use crate::fs::{Ownership, S3Fs, WritePolicy};
use crate::fuse::FuseAdapter;
use crate::read::{ReadConfig, Reader};
use crate::store::{ObjectStore, S3Settings, S3Store, StoreError};
use crate::upload::{UploadConfig, Uploads};

/// A failure before or while mounting, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

/// How long the checks before mounting may take in all.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(20);
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

    let checksums_when_required = match args.request_checksums {
        ChecksumMode::WhenRequired => true,
        ChecksumMode::WhenSupported => false,
        ChecksumMode::Auto => args.endpoint_url.is_some(),
    };
    let settings = S3Settings {
        bucket: target.bucket.clone(),
        endpoint_url: args.endpoint_url.clone(),
        region: args.region.clone(),
        profile: args.profile.clone(),
        force_path_style: args.force_path_style,
        checksums_when_required,
        idle_timeout: Duration::from_secs(args.read_stall_timeout.max(1)),
        multipart_copy_threshold: args.multipart_copy_threshold,
    };
    let read_config = read_config(&args)?;
    let upload_config = upload_config(&args)?;
    let store = Arc::new(rt.block_on(preflight(&settings, &target))?);

    let owner = Ownership {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        uid: args.uid.unwrap_or_else(|| unsafe { libc::getuid() }),
        gid: args.gid.unwrap_or_else(|| unsafe { libc::getgid() }),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
    };
    let freshness = Freshness {
        ttl: Duration::from_secs(args.metadata_ttl),
        serve_stale: args.stale_while_revalidate,
    };
    let db = cache_dir(&args).and_then(|dir| {
        let identity = format!("{}|{}|{}", store.endpoint(), target.bucket, target.prefix);
        CatalogDb::open(&dir, &identity)
    });
    let catalog = Catalog::new(store.clone(), &target.prefix, freshness, db);
    let policy = WritePolicy {
        read_only: args.read_only,
        no_delete: args.no_delete,
        no_overwrite: args.no_overwrite,
    };
    let fs = Arc::new(S3Fs::new(
        catalog,
        Reader::new(store.clone(), read_config),
        Uploads::new(store.clone(), upload_config),
        policy,
        owner,
    ));
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());

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

    // Install signal handlers before the mount goes live, so a signal that
    // arrives right after it still unmounts cleanly.
    let (mut sigterm, mut sigint) = {
        let _guard = rt.enter();
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                return Err(MountError(format!("cannot install signal handlers: {e}")))
            }
        }
    };

    let mut session = fuser::Session::new(adapter, &mountpoint, &config).map_err(|e| {
        MountError(format!(
            "cannot mount at {}: {e}; check that /dev/fuse exists and that you may mount (root, or fusermount3 installed)",
            mountpoint.display()
        ))
    })?;
    let mut unmounter = session.unmount_callable();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-loop".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(|e| MountError(format!("cannot start the request loop: {e}")))?;

    if args.kernel_readahead > 0 {
        set_kernel_readahead(&mountpoint, args.kernel_readahead);
    }
    info!(target = %store.describe(), prefix = %target.prefix, mountpoint = %mountpoint.display(), "mounted");
    on_ready();

    rt.block_on(async {
        let reason = tokio::select! {
            finished = &mut done_rx => {
                if let Ok(Err(e)) = finished {
                    warn!(error = %e, "request loop ended with an error");
                }
                info!("unmounted externally; exiting");
                log_read_stats(&fs, &store);
                return;
            }
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        info!(signal = reason, open_files = fs.open_files(), "unmounting");
        // Uploads still open cannot complete once the mount is gone; abort
        // them so nothing is left half-done in the bucket.
        if tokio::time::timeout(UNMOUNT_GRACE, fs.abort_uploads())
            .await
            .is_err()
        {
            warn!("aborting uploads in flight took too long; lifecycle rules will clean up");
        }
        log_read_stats(&fs, &store);
        if let Err(e) = unmounter.unmount() {
            warn!(error = %e, "unmount failed (busy?); detaching lazily");
            detach(&mountpoint);
            return;
        }
        if tokio::time::timeout(UNMOUNT_GRACE, done_rx).await.is_err() {
            warn!("request loop did not finish after unmount; exiting anyway");
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
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
        std::fs::create_dir_all(&spool_dir).map_err(|e| {
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
    })
}

/// The directory for the persistent catalog, if any.
fn cache_dir(args: &Args) -> Option<PathBuf> {
    match &args.cache_dir {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir.clone()),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
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

/// Lazily detaches a busy mount; open files fail once the process exits.
fn detach(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "lazy unmount failed");
    }
}

/// Checks the mountpoint: exists, is a directory, is not already mounted.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(MountError(format!(
                "mountpoint {shown} is not a directory; give an existing directory"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError(format!(
                "mountpoint {shown} does not exist; create it first with `mkdir -p {shown}`"
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError(format!(
                "mountpoint {shown} is a dead FUSE mount (transport endpoint is not connected); clear it with `umount -l {shown}`"
            )))
        }
        Err(e) => return Err(MountError(format!("cannot use mountpoint {shown}: {e}"))),
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| MountError(format!("cannot resolve mountpoint {shown}: {e}")))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mount_points(&mountinfo).any(|p| p == canonical) {
        return Err(MountError(format!(
            "{shown} is already a mount point; unmount it first (`umount {shown}`) or choose another directory"
        )));
    }
    Ok(canonical)
}

/// Mount points listed in /proc/self/mountinfo (field 5, octal-escaped).
fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cheap request proves the endpoint answers, the credentials work and
/// the bucket exists, before anything is mounted.
async fn preflight(settings: &S3Settings, target: &Target) -> Result<S3Store, MountError> {
    let secs = PREFLIGHT_TIMEOUT.as_secs();
    let endpoint_hint = settings.endpoint_url.as_deref().unwrap_or("AWS S3");
    let checks = async {
        let store = S3Store::connect(settings).await;
        if let Err(e) = store.check_credentials().await {
            return Err(MountError(format!(
                "{e}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --profile NAME"
            )));
        }
        match store
            .list_page(&target.prefix, Some("/"), None, Some(1))
            .await
        {
            Ok(_) => Ok(store),
            Err(e) => Err(explain(&e, &store, target)),
        }
    };
    tokio::time::timeout(PREFLIGHT_TIMEOUT, checks)
        .await
        .unwrap_or_else(|_| {
            Err(MountError(format!(
                "endpoint {endpoint_hint} did not answer within {secs}s; check --endpoint-url and the network"
            )))
        })
}

fn explain(e: &StoreError, store: &S3Store, target: &Target) -> MountError {
    let endpoint = store.endpoint();
    let bucket = &target.bucket;
    MountError(match e {
        StoreError::NoSuchBucket => format!(
            "bucket '{bucket}' does not exist at {endpoint}; check the bucket name (and --endpoint-url/--region)"
        ),
        StoreError::BadCredentials(code) => format!(
            "credentials were rejected by {endpoint} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile"
        ),
        StoreError::AccessDenied(code) => format!(
            "access denied listing s3://{bucket}/{} ({code}); the credentials need s3:ListBucket on this bucket",
            target.prefix
        ),
        StoreError::NoCredentials(m) => format!(
            "no AWS credentials found ({m}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --profile NAME"
        ),
        StoreError::Unreachable(m) => format!(
            "cannot reach endpoint {endpoint} ({m}); check --endpoint-url and that the server is running"
        ),
        StoreError::Timeout(m) => format!(
            "endpoint {endpoint} did not answer in time ({m}); check --endpoint-url and the network"
        ),
        other => format!("listing s3://{bucket}/{} at {endpoint} failed: {other}", target.prefix),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_with_escaped_spaces() {
        let info = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /srv rw - ext4 /dev/x rw\n";
        let points: Vec<PathBuf> = mount_points(info).collect();
        assert_eq!(
            points,
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/srv")]
        );
    }

    #[test]
    fn missing_mountpoint_names_the_fix() {
        let err = check_mountpoint(Path::new("/nonexistent/s3mount-test")).unwrap_err();
        assert!(
            err.0.contains("does not exist") && err.0.contains("mkdir -p"),
            "{}",
            err.0
        );
    }

    #[test]
    fn root_is_already_a_mount_point() {
        let err = check_mountpoint(Path::new("/")).unwrap_err();
        assert!(err.0.contains("already a mount point"), "{}", err.0);
    }
}

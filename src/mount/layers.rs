//! The filesystem's layers built from the command line: the store's,
//! catalog's, read path's and write path's settings taken from `Args` and
//! checked for combinations that cannot work, each refusal one line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Catalog, CatalogDb, Freshness, IN_MEMORY_LIMIT};
use crate::cli::{Args, PosixMetadataSetting, Target};
use crate::fs::{Ownership, PosixMetadata, S3Fs, WritePolicy};
use crate::read::disk_cache::DiskCache;
use crate::read::{ReadConfig, Reader};
use crate::service::kernel_mount;
use crate::store::S3Store;
use crate::write::{UploadConfig, Uploads};

use super::MountError;

/// The filesystem's layers over `store`: catalog (with its on-disk
/// database), read path and write path, with the ownership and write policy
/// the options ask for.
pub(super) fn build_layers(
    args: &Args,
    target: &Target,
    store: &Arc<S3Store>,
    db: Option<Arc<CatalogDb>>,
    (read_config, data_cache): (ReadConfig, Option<Arc<DiskCache>>),
    upload_config: UploadConfig,
) -> Arc<S3Fs<S3Store>> {
    let owner = Ownership {
        uid: args.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
        gid: args.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw()),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        posix: match args.posix_metadata {
            PosixMetadataSetting::Off => PosixMetadata::Off,
            PosixMetadataSetting::Lazy => PosixMetadata::Lazy,
            PosixMetadataSetting::Full => PosixMetadata::Full,
        },
    };
    let freshness = Freshness {
        ttl: Duration::from_secs(args.metadata_ttl),
        serve_stale: args.stale_while_revalidate,
    };
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
        // Off the rename's path: one round trip less per claim.
        release_claim_locks_in_background: true,
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
pub(super) fn open_data_cache(
    args: &Args,
    target: &Target,
) -> Result<Option<Arc<DiskCache>>, MountError> {
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
pub(super) fn read_config(args: &Args) -> Result<ReadConfig, MountError> {
    let mut config = ReadConfig {
        part_size: args.read_part_size,
        max_requests: args.max_concurrent_requests.max(1),
        memory_limit: args.memory_limit,
        ..ReadConfig::default()
    };
    config.window.max_window = args.max_read_window.max(config.window.initial_window);
    config.window.small_object = args.small_object_size;
    config.data_cache_complete = args.data_cache_complete;
    config.columnar_suffixes = args
        .columnar_suffixes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
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
pub(super) fn upload_config(args: &Args) -> Result<UploadConfig, MountError> {
    if args.write_part_size < 5 << 20 || args.write_part_size > 2 << 30 {
        return Err(MountError(format!(
            "--write-part-size {} is outside S3's limits; give a size from 5M to 2G",
            args.write_part_size
        )));
    }
    let spool_dir = match (
        &args.spool_dir,
        listing_cache_dir(args.cache_dir.as_deref()),
    ) {
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
/// The on-disk catalog of `target` as `store` reaches it, under the
/// listing cache directory, unless the options keep listings in memory.
pub(super) fn open_catalog_db(
    args: &Args,
    target: &Target,
    store: &S3Store,
) -> Option<Arc<CatalogDb>> {
    let dir = listing_cache_dir(args.cache_dir.as_deref())?;
    CatalogDb::open(&dir, &catalog_identity(store, target))
}

/// What a catalog database belongs to: endpoint, bucket and prefix.
pub(crate) fn catalog_identity(store: &S3Store, target: &Target) -> String {
    format!("{}|{}|{}", store.endpoint(), target.bucket, target.prefix)
}

/// `--cache-dir`, or where listings are kept by default; `None` for
/// `--cache-dir none`.
pub(crate) fn listing_cache_dir(cache_dir: Option<&std::path::Path>) -> Option<PathBuf> {
    match cache_dir {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir.to_path_buf()),
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

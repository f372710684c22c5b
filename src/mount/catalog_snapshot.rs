//! `--catalog-snapshot`: a mount whose catalog is empty starts from a
//! published listing snapshot (one GET) instead of listing every directory.
//! Whatever goes wrong is one log line, and the mount lists from S3.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use crate::catalog::snapshot::{download_to_file, import_snapshot, ready_for_snapshot};
use crate::catalog::CatalogDb;
use crate::cli::{Args, ObjectUrl, Target};
use crate::store::S3Store;

/// What loading a snapshot gave, for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLoaded {
    pub entries: u64,
    pub created: SystemTime,
}

/// Loads `url` into `db` when `db` holds no listing yet. `store` reads the
/// mount's bucket; a snapshot in another bucket is read with the same
/// connection settings.
pub(super) async fn load_catalog_snapshot(
    args: &Args,
    target: &Target,
    store: &Arc<S3Store>,
    db: &Arc<CatalogDb>,
    url: &ObjectUrl,
) -> Option<SnapshotLoaded> {
    let (empty, cut_short) = ready_for_snapshot(db);
    if cut_short {
        warn!(snapshot = %url, "an earlier load of the catalog snapshot was cut short; loading it again");
    }
    if !empty {
        info!(snapshot = %url, "the catalog holds listings already; the snapshot is not loaded");
        return None;
    }
    // One name: the catalog's lock keeps other mounts of the target out,
    // and a file left by a mount killed while loading is replaced.
    let file = db.path().with_extension("snapshot.tmp");
    let loaded = load(args, target, store, db, url, &file).await;
    let _ = std::fs::remove_file(&file);
    match loaded {
        Ok(loaded) => Some(loaded),
        Err(why) => {
            warn!(snapshot = %url, "not starting from the catalog snapshot ({why}); listing from S3");
            None
        }
    }
}

async fn load(
    args: &Args,
    target: &Target,
    store: &Arc<S3Store>,
    db: &Arc<CatalogDb>,
    url: &ObjectUrl,
    file: &std::path::Path,
) -> Result<SnapshotLoaded, String> {
    let started = std::time::Instant::now();
    let bytes = if url.bucket == target.bucket {
        download_to_file(&**store, &url.key, file).await
    } else {
        let other = S3Store::connect(&args.connection.settings(&url.bucket)).await;
        download_to_file(&other, &url.key, file).await
    }
    .map_err(|e| e.to_string())?;
    let (db, path, bucket, prefix) = (
        db.clone(),
        file.to_path_buf(),
        target.bucket.clone(),
        target.prefix.clone(),
    );
    let (header, counts) =
        tokio::task::spawn_blocking(move || import_snapshot(&db, &path, &bucket, &prefix))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let age = SystemTime::now()
        .duration_since(header.created)
        .unwrap_or_default();
    info!(
        snapshot = %url,
        bytes,
        directories = counts.dirs,
        entries = counts.entries,
        age_s = age.as_secs(),
        took_ms = started.elapsed().as_millis() as u64,
        "started from the catalog snapshot"
    );
    Ok(SnapshotLoaded {
        entries: counts.entries,
        created: header.created,
    })
}

//! `s3mount catalog publish BUCKET[/PREFIX] s3://BUCKET/KEY`: writes the
//! listings a catalog holds for a target (listing from S3 the directories
//! it lacks) to one snapshot object, which new mounts start from
//! (`--catalog-snapshot`). The snapshot is written to a local file first
//! and uploaded whole, conditional on the object it replaces, so readers
//! only ever see a whole snapshot and two publishers never mix theirs.
//!
//! `s3mount catalog import-inventory s3://.../manifest.json BUCKET[/PREFIX]
//! s3://BUCKET/KEY` makes the same snapshot from an S3 Inventory report,
//! without a single LIST.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};

use crate::blocking::blocking;
use crate::catalog::inventory::{InventoryManifest, InventoryTree};
use crate::catalog::snapshot::{download_to_file, SnapshotCounts, SnapshotHeader, SnapshotWriter};
use crate::catalog::{
    same_etag, Catalog, CatalogDb, Entry, EntryKind, Freshness, ObjectAttrs, DIR_MARKER_VERSION,
};
use crate::cli::{Connection, ObjectUrl, Target};
use crate::mount::layers::{catalog_identity, listing_cache_dir};
use crate::private_dir::create_private_dir;
use crate::store::{Body, ObjectStore, PosixMeta, S3Store, StoreError, WriteCondition};

/// Share listing catalogs between machines.
#[derive(Debug, Parser)]
#[command(name = "s3mount catalog", bin_name = "s3mount catalog")]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Write the catalog's listings of BUCKET[/PREFIX] to one snapshot
    /// object that mounts start from with --catalog-snapshot.
    Publish(PublishArgs),
    /// Turn an S3 Inventory report (manifest.json and its CSV files) into
    /// a snapshot of BUCKET[/PREFIX], without listing anything.
    ImportInventory(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The report's manifest: s3://BUCKET/.../manifest.json.
    pub manifest: String,
    /// Whose listings: BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX, as
    /// mounted (the report's source bucket).
    pub target: String,
    /// Where the snapshot goes: s3://BUCKET/KEY.
    pub snapshot: String,
    #[command(flatten)]
    pub connection: Connection,
    /// Where the report's rows are sorted into directories meanwhile
    /// (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Read KEY=VALUE lines into the environment first (as for mounting).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Whose listings: BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX, as mounted.
    pub target: String,
    /// Where the snapshot goes: s3://BUCKET/KEY.
    pub snapshot: String,
    #[command(flatten)]
    pub connection: Connection,
    /// The mount's listing cache directory (as given to the mount).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Also learn (one HEAD each) the modes, owners, times and symlinks of
    /// objects whose attributes the catalog does not know yet, so mounts
    /// started from the snapshot never ask for them (one publisher pays
    /// for the fleet). Without it, the snapshot carries what the catalog
    /// knows.
    #[arg(long)]
    pub learn_attrs: bool,
    /// Read KEY=VALUE lines into the environment first (as for mounting).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
}

/// HEADs in flight while `catalog publish --learn-attrs` learns attributes.
const LEARN_CONCURRENCY: usize = 32;

pub fn run(argv: &[OsString]) -> ExitCode {
    if let Err(e) = crate::cli::load_env_file(argv) {
        eprintln!("s3mount: error: {e}");
        return ExitCode::from(2);
    }
    let args = CatalogArgs::parse_from(argv);
    let rt = match super::command_runtime(2) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = match &args.command {
        CatalogCommand::Publish(p) => rt.block_on(publish(p)),
        CatalogCommand::ImportInventory(i) => rt.block_on(import_inventory(i)),
    };
    match outcome {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("s3mount: error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn publish(args: &PublishArgs) -> Result<String, String> {
    let target = Target::parse(&args.target)?;
    let url = ObjectUrl::parse(&args.snapshot)?;
    let settings = args.connection.settings(&target.bucket);
    let store = Arc::new(
        crate::mount::preflight::preflight(&settings, &target)
            .await
            .map_err(|e| e.0)?,
    );
    let dir = listing_cache_dir(args.cache_dir.as_deref());
    let db = dir
        .as_deref()
        .and_then(|d| CatalogDb::open_read_only(d, &catalog_identity(&store, &target)));
    let held = db.is_some();
    // Listings are taken as the catalog holds them, whatever their age.
    let freshness = Freshness {
        ttl: Duration::from_secs(u64::MAX / 4),
        serve_stale: false,
    };
    let catalog = Catalog::new(store.clone(), &target.prefix, freshness, db, 100_000);
    // Directories the catalog lacks are listed into a scratch catalog of
    // their own, which keeps big listings on disk as a mount does.
    let scratch = dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("publish-{}", std::process::id()));
    create_private_dir(&scratch)
        .map_err(|e| format!("cannot write the snapshot under {}: {e}", scratch.display()))?;
    let lister = Catalog::new(
        store.clone(),
        &target.prefix,
        freshness,
        CatalogDb::open(&scratch, "publish"),
        100_000,
    );
    let tmp = scratch.join("snapshot");
    let written = write_snapshot((&catalog, &lister), &target, &tmp, args.learn_attrs).await;
    let outcome = match written {
        Ok(counts) => upload(&store, &args.connection, &target, &url, &tmp)
            .await
            .map(|bytes| {
                let relaxed = std::sync::atomic::Ordering::Relaxed;
                let lists = lister.stats().refreshes.load(relaxed);
                let heads = lister.attrs().stats().heads.load(relaxed);
                format!(
                    "published {} directories, {} entries ({bytes} bytes, {} with attributes) to {url}; {lists} directories listed from S3, {heads} objects' attributes learned{}",
                    counts.dirs,
                    counts.entries,
                    counts.attrs,
                    if held { "" } else { " (no catalog found under the cache directory)" }
                )
            }),
        Err(e) => Err(e),
    };
    drop(lister);
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

async fn import_inventory(args: &ImportArgs) -> Result<String, String> {
    let target = Target::parse(&args.target)?;
    let url = ObjectUrl::parse(&args.snapshot)?;
    let manifest_url = ObjectUrl::parse(&args.manifest)?;
    let settings = args.connection.settings(&target.bucket);
    let store = Arc::new(
        crate::mount::preflight::preflight(&settings, &target)
            .await
            .map_err(|e| e.0)?,
    );
    // The report's keys are kept in a directory of this user's only.
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("s3mount-inventory-{}", std::process::id()));
    create_private_dir(&work)
        .map_err(|e| format!("cannot use --work-dir {}: {e}", work.display()))?;
    let scratch = |what: &str| work.join(what);
    let (manifest_file, data_file, rows_file, snapshot_file) = (
        scratch("manifest.json"),
        scratch("data"),
        scratch("rows.sqlite3"),
        scratch("s3msnap"),
    );
    let outcome = async {
        let reports = S3Store::connect(&args.connection.settings(&manifest_url.bucket)).await;
        download_to_file(&reports, &manifest_url.key, &manifest_file)
            .await
            .map_err(|e| format!("cannot read {manifest_url}: {e}"))?;
        let json = std::fs::read(&manifest_file)
            .map_err(|e| format!("cannot read {}: {e}", manifest_file.display()))?;
        let manifest = InventoryManifest::parse(&json).map_err(|e| format!("{manifest_url}: {e}"))?;
        if manifest.source_bucket != target.bucket {
            return Err(format!(
                "{manifest_url} is an inventory of bucket {}, not of {}; give that bucket as the target",
                manifest.source_bucket, target.bucket
            ));
        }
        let data = S3Store::connect(&args.connection.settings(&manifest.destination_bucket)).await;
        let mut tree = InventoryTree::new(&rows_file, &target.prefix, &manifest).map_err(|e| e.to_string())?;
        for key in &manifest.files {
            download_to_file(&data, key, &data_file)
                .await
                .map_err(|e| format!("cannot read s3://{}/{key}: {e}", manifest.destination_bucket))?;
            if manifest.file_format.eq_ignore_ascii_case("Parquet") {
                blocking(|| tree.add_parquet(key, &data_file)).map_err(|e| e.to_string())?;
            } else {
                let file = std::fs::File::open(&data_file)
                .map_err(|e| format!("cannot read {}: {e}", data_file.display()))?;
                let csv = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(file));
                blocking(|| tree.add_csv(key, csv)).map_err(|e| e.to_string())?;
            }
        }
        let keys = tree.keys();
        let header = SnapshotHeader {
            bucket: target.bucket.clone(),
            prefix: target.prefix.clone(),
            created: manifest.created,
        };
        let out = std::fs::File::create(&snapshot_file)
            .map_err(|e| format!("cannot write {}: {e}", snapshot_file.display()))?;
        let w = SnapshotWriter::new(BufWriter::new(out), &header).map_err(|e| e.to_string())?;
        let (out, counts) = blocking(|| tree.write_snapshot(w)).map_err(|e| e.to_string())?;
        out.into_inner()
            .map_err(|e| e.into_error().to_string())?
            .sync_all()
            .map_err(|e| e.to_string())?;
        let bytes = upload(&store, &args.connection, &target, &url, &snapshot_file).await?;
        Ok(format!(
            "imported {keys} keys of {} data files as {} directories, {} entries ({bytes} bytes) to {url}",
            manifest.files.len(),
            counts.dirs,
            counts.entries
        ))
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// Writes every directory under the target, breadth first, to `file`.
async fn write_snapshot(
    (catalog, lister): (&Catalog<S3Store>, &Catalog<S3Store>),
    target: &Target,
    file: &std::path::Path,
    learn_attrs: bool,
) -> Result<SnapshotCounts, String> {
    let out =
        std::fs::File::create(file).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let header = SnapshotHeader {
        bucket: target.bucket.clone(),
        prefix: target.prefix.clone(),
        created: SystemTime::now(),
    };
    let io = |e: std::io::Error| format!("cannot write {}: {e}", file.display());
    let mut w = SnapshotWriter::new(BufWriter::new(out), &header).map_err(io)?;
    let mut dirs: VecDeque<String> = VecDeque::from([String::new()]);
    while let Some(dir) = dirs.pop_front() {
        let prefix = format!("{}{dir}", target.prefix);
        let listing = match catalog.held(&prefix) {
            Some(listing) => listing,
            None => lister
                .listed(&prefix)
                .await
                .map_err(|e| format!("cannot list s3://{}/{prefix}: {e}", target.bucket))?,
        };
        w.dir(&dir, listing.listed_at).map_err(io)?;
        let mut after = 0;
        loop {
            let page = blocking(|| listing.page(after, 1000));
            let Some(&(last, _)) = page.last() else { break };
            let attrs = page_attrs((catalog, lister), &prefix, &page, learn_attrs).await;
            for ((_, e), known) in page.iter().zip(attrs) {
                w.entry(e).map_err(io)?;
                if let Some(a) = known {
                    w.attrs(&a.posix, a.link.as_deref()).map_err(io)?;
                }
                if e.is_dir() {
                    dirs.push_back(format!("{dir}{}/", e.name));
                }
            }
            after = last;
        }
    }
    let (out, counts) = w.finish().map_err(io)?;
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(counts)
}

/// The attributes known of each entry of `page` (of directory `prefix`):
/// in the mount's catalog, else learned into the scratch one when
/// `learn` (directories: only what the catalog knows of their markers).
async fn page_attrs(
    (catalog, lister): (&Catalog<S3Store>, &Catalog<S3Store>),
    prefix: &str,
    page: &[(u64, Entry)],
    learn: bool,
) -> Vec<Option<Arc<ObjectAttrs>>> {
    let mut known = Vec::with_capacity(page.len());
    let mut learning = tokio::task::JoinSet::new();
    for (i, (_, e)) in page.iter().enumerate() {
        let (key, etag, listed) = match &e.kind {
            EntryKind::File { etag, .. } => {
                (format!("{prefix}{}", e.name), etag.as_str(), Some(e.mtime))
            }
            EntryKind::Dir => (format!("{prefix}{}/", e.name), DIR_MARKER_VERSION, None),
        };
        let found = blocking(|| {
            catalog
                .attrs()
                .known(&key, etag, listed)
                .or_else(|| lister.attrs().known(&key, etag, listed))
        });
        if found.is_none() && learn && !e.is_dir() {
            while learning.len() >= LEARN_CONCURRENCY {
                if let Some(Ok((i, a))) = learning.join_next().await {
                    known[i] = a;
                }
            }
            let (attrs, etag) = (lister.attrs().clone(), etag.to_owned());
            learning.spawn(async move {
                // Only the listed version's: the object may have been
                // replaced since it was listed.
                let learned = attrs.learn(&key, &etag, listed).await.ok();
                (i, learned.filter(|a| same_etag(&a.etag, &etag)))
            });
        }
        known.push(found);
    }
    while let Some(done) = learning.join_next().await {
        if let Ok((i, a)) = done {
            known[i] = a;
        }
    }
    known
}

/// Uploads the snapshot whole, over the version it replaces (or only if
/// there is none), so a publisher that raced another fails instead of
/// overwriting it unseen. Returns its size.
async fn upload(
    store: &Arc<S3Store>,
    connection: &Connection,
    target: &Target,
    url: &ObjectUrl,
    file: &std::path::Path,
) -> Result<u64, String> {
    let len = std::fs::metadata(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    let other;
    let dest: &S3Store = if url.bucket == target.bucket {
        store
    } else {
        other = S3Store::connect(&connection.settings(&url.bucket)).await;
        &other
    };
    let seen = match dest.head(&url.key).await {
        Ok(meta) => Some(meta.etag),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(format!("cannot look at {url}: {e}")),
    };
    let condition = match &seen {
        Some(etag) => WriteCondition::IfMatch(etag),
        None => WriteCondition::IfAbsent,
    };
    let body = Body::File {
        path: file.to_path_buf(),
        offset: 0,
        len,
    };
    match dest.put(&url.key, body, condition, &PosixMeta::NONE).await {
        Ok(_) => Ok(len),
        Err(StoreError::PreconditionFailed) => Err(format!(
            "another publisher wrote {url} while this one ran; run again to publish over it"
        )),
        Err(e) => Err(format!("cannot upload {url}: {e}")),
    }
}

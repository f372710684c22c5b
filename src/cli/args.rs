//! The clap definition of the command line: every option of a mount, and
//! the connection options `doctor` and `catalog` commands share.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::byte_sizes::parse_size;

/// Mount an S3 bucket or prefix as a directory tree.
#[derive(Debug, Parser)]
#[command(
    name = "s3mount",
    version,
    about,
    long_about = None,
    after_help = "Also:\n  s3mount refresh PATH...         list directories of a running mount again now\n  s3mount doctor BUCKET[/PREFIX]  check credentials, latency, throughput and object sizes\n\nWhat each operation does on S3: docs/SEMANTICS.md."
)]
pub struct Args {
    /// What to mount: BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX.
    pub target: String,

    /// Where to mount it: an existing, empty-or-not directory that is not a mount point.
    pub mountpoint: PathBuf,

    #[command(flatten)]
    pub connection: Connection,

    /// Owner of files and directories whose metadata names none (default:
    /// the user running s3mount).
    #[arg(long)]
    pub uid: Option<u32>,

    /// Group of files and directories whose metadata names none (default:
    /// the group running s3mount).
    #[arg(long)]
    pub gid: Option<u32>,

    /// Permission bits of files whose metadata gives none, in octal.
    #[arg(long, value_parser = parse_octal, default_value = "644")]
    pub file_mode: u16,

    /// Permission bits of directories whose metadata gives none, in octal.
    #[arg(long, value_parser = parse_octal, default_value = "755")]
    pub dir_mode: u16,

    /// Modes, owners, times and symlinks kept in object metadata (s3fs's
    /// and rclone's headers): `off` keeps none (chmod, chown, utimens and
    /// symlink fail with EPERM); `lazy` stores them with every write and
    /// learns those of other clients' objects with one HEAD per version
    /// when first stat'ed, remembered in the catalog; `full` also learns
    /// them for every entry a directory read lists.
    #[arg(long, value_enum, default_value = "lazy")]
    pub posix_metadata: PosixMetadataSetting,

    /// Let users other than the mounting user access the mount.
    #[arg(long)]
    pub allow_other: bool,

    /// Let root access the mount as well as the mounting user.
    #[arg(long, conflicts_with = "allow_other")]
    pub allow_root: bool,

    /// Refuse every modification with EROFS.
    #[arg(long)]
    pub read_only: bool,

    /// Refuse unlink and rmdir with EPERM (renames, which keep the data, still work).
    #[arg(long)]
    pub no_delete: bool,

    /// Refuse replacing an existing file, by writing or by renaming onto it.
    #[arg(long)]
    pub no_overwrite: bool,

    /// Refuse to mount read-write unless the endpoint enforces S3 conditional
    /// writes (If-None-Match/If-Match), which make renames claims that exactly
    /// one mount wins and O_EXCL creates create-only across mounts.
    #[arg(long)]
    pub require_conditional_writes: bool,

    /// Size of the first parts of a multipart upload (later parts grow so
    /// any file up to S3's 5 TiB limit fits); files under twice this size
    /// are sent with one PUT.
    #[arg(long, value_parser = parse_size, default_value = "8M", value_name = "SIZE")]
    pub write_part_size: u64,

    /// Disk space all files being written may take in the spool at once;
    /// a write beyond it fails with ENOSPC.
    #[arg(long, value_parser = parse_size, default_value = "16G", value_name = "SIZE")]
    pub spool_limit: u64,

    /// Largest object that may be changed in place (written below its end,
    /// or truncated); larger ones fail such writes with EFBIG. Appending
    /// works at any size.
    #[arg(long, value_parser = parse_size, default_value = "1G", value_name = "SIZE")]
    pub max_modify_size: u64,

    /// Where files being written are spooled (default: the cache directory,
    /// else the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Objects larger than this are copied in parts when renamed (S3's
    /// limit for one copy is 5G). For testing.
    #[arg(long, value_parser = parse_size, default_value = "5G", value_name = "SIZE", hide = true)]
    pub multipart_copy_threshold: u64,

    /// How long, in seconds, a directory listing is trusted before S3 is asked again.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub metadata_ttl: u64,

    /// Size of each ranged GET that read-ahead is split into (e.g. 8M).
    #[arg(long, value_parser = parse_size, default_value = "8M", value_name = "SIZE")]
    pub read_part_size: u64,

    /// Largest read-ahead window of one sequential reader (e.g. 64M).
    #[arg(long, value_parser = parse_size, default_value = "64M", value_name = "SIZE")]
    pub max_read_window: u64,

    /// Ranged GETs in flight at once, across all open files (fewer when
    /// --memory-limit is small: each holds up to 1.5 MiB).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_concurrent_requests: usize,

    /// Memory for the block cache, GETs in flight and all read-ahead (e.g.
    /// 512M, 2G).
    #[arg(long, value_parser = parse_size, default_value = "512M", value_name = "SIZE")]
    pub memory_limit: u64,

    /// Objects up to this size are fetched whole on their first read.
    #[arg(long, value_parser = parse_size, default_value = "2M", value_name = "SIZE")]
    pub small_object_size: u64,

    /// Kernel readahead for the mount (bigger FUSE reads, fewer requests);
    /// 0 leaves the kernel's default. Needs root; ignored otherwise.
    #[arg(long, value_parser = parse_size_or_zero, default_value = "1M", value_name = "SIZE")]
    pub kernel_readahead: u64,

    /// Largest FUSE request the mount asks the kernel for: a large read on a
    /// direct-I/O handle (columnar files) reaches the daemon whole. Raises
    /// the system's `fs.fuse.max_pages_limit` when it is lower (root only);
    /// 0 leaves it alone.
    #[arg(long, value_parser = parse_size_or_zero, default_value = "8M", value_name = "SIZE")]
    pub max_fuse_request: u64,

    /// Abandon and resume a download that delivers no byte for this long.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub read_stall_timeout: u64,

    /// How long a request is retried through S3 errors, throttling or an
    /// outage before the program gets EIO; shorter outages are invisible.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub retry_timeout: u64,

    /// After --metadata-ttl, serve the old listing at once while one
    /// background refresh replaces it (false: wait for the new listing).
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub stale_while_revalidate: bool,

    /// Where listings are persisted (default: $XDG_CACHE_HOME/s3mount or
    /// ~/.cache/s3mount); `none` keeps them in memory only.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Start from the listing snapshot at s3://BUCKET/KEY (written by
    /// `s3mount catalog publish`) when the catalog is empty: one GET instead
    /// of listing every directory again. A snapshot that is missing,
    /// damaged or of another target is reported and the mount lists from S3.
    #[arg(long, value_name = "URL", value_parser = parse_object_url)]
    pub catalog_snapshot: Option<crate::cli::ObjectUrl>,

    /// Keep object data on local disk in DIR, across remounts: a second
    /// read of the same object version is served from disk (off by default).
    #[arg(long, value_name = "DIR")]
    pub data_cache: Option<PathBuf>,

    /// Most disk --data-cache may use (default: a tenth of the free space of
    /// its filesystem; 5% of the disk is always left free).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub data_cache_size: Option<u64>,

    /// After the last close of an object --data-cache holds at least half
    /// of, fetch the rest (when at most SIZE is missing) in the background,
    /// so its next open is read by the kernel itself; 0 turns this off.
    #[arg(long, value_parser = parse_size, default_value = "256M", value_name = "SIZE")]
    pub data_cache_complete: u64,

    /// Name endings of columnar files (comma-separated; empty for none):
    /// read without the kernel's page cache and its readahead, so a query
    /// fetches the column chunks it reads, not what follows them.
    #[arg(
        long,
        default_value = ".parquet,.orc,.arrow,.feather",
        value_name = "SUFFIXES"
    )]
    pub columnar_suffixes: String,

    /// Read files that --data-cache holds whole through the daemon instead
    /// of letting the kernel read the cache file itself (FUSE passthrough,
    /// Linux 6.9+; used by default where the kernel offers it).
    #[arg(long)]
    pub no_passthrough: bool,

    /// Stay in the foreground instead of returning once the mount is live.
    #[arg(short, long)]
    pub foreground: bool,

    /// Unmount automatically when the daemon dies, even by SIGKILL, so no
    /// dead mount ("Transport endpoint is not connected") is left behind.
    #[arg(long)]
    pub auto_unmount: bool,

    /// Read KEY=VALUE lines (credentials, AWS_ENDPOINT_URL, ...) into the
    /// environment before anything else; for fstab, where no shell sets them.
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100;
    /// a bare port binds to 127.0.0.1).
    #[arg(long, value_parser = parse_metrics_addr, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Export the number of files in this directory (relative to the mount
    /// root) as a metric, refreshed at the metadata TTL. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub count_dir: Vec<String>,

    /// Log a one-line summary of requests, bytes and cache use at info level
    /// this often, in seconds; 0 turns it off.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub summary_interval: u64,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Log level or filter (error, warn, info, debug, trace, or RUST_LOG syntax).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Append log lines to this file instead of stderr (keeps the log of a
    /// background daemon).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Log line format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Options in mount(8) form: -o key=value,flag,... (any long option above).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// How to reach S3: shared by mounting and `s3mount doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// S3 endpoint URL for S3-compatible stores (Garage, MinIO, ...).
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// AWS region (default: from the AWS configuration, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,

    /// Named profile from the shared AWS config and credentials files.
    #[arg(long)]
    pub profile: Option<String>,

    /// Address buckets as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT.
    #[arg(long)]
    pub force_path_style: bool,

    /// When to add checksums to requests: `when-required` suits S3-compatible
    /// stores that reject streaming checksums; `auto` picks it for custom endpoints.
    #[arg(long, value_enum, default_value_t = ChecksumMode::Auto)]
    pub request_checksums: ChecksumMode,
}

impl Connection {
    /// Store settings for `bucket`; the read and copy tuning stays default.
    pub fn settings(&self, bucket: &str) -> crate::store::S3Settings {
        crate::store::S3Settings {
            bucket: bucket.to_owned(),
            endpoint_url: self.endpoint_url.clone(),
            region: self.region.clone(),
            profile: self.profile.clone(),
            force_path_style: self.force_path_style,
            checksums_when_required: match self.request_checksums {
                ChecksumMode::WhenRequired => true,
                ChecksumMode::WhenSupported => false,
                ChecksumMode::Auto => self.endpoint_url.is_some(),
            },
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PosixMetadataSetting {
    Off,
    Lazy,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumMode {
    Auto,
    WhenRequired,
    WhenSupported,
}

fn parse_octal(s: &str) -> Result<u16, String> {
    let digits = s.trim_start_matches("0o");
    match u16::from_str_radix(digits, 8) {
        Ok(v) if v <= 0o7777 => Ok(v),
        _ => Err(format!("'{s}' is not an octal mode like 644")),
    }
}

fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        Ok(0)
    } else {
        parse_size(s)
    }
}

/// `--metrics-addr`: `HOST:PORT`, or a bare `PORT` / `:PORT`, which binds to
/// 127.0.0.1 only (metrics are for the local scraper unless a host says
/// otherwise).
pub fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let port = s.strip_prefix(':').unwrap_or(s);
    port.parse::<u16>()
        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|_| format!("'{s}' is not HOST:PORT or a port number"))
}

fn parse_object_url(s: &str) -> Result<crate::cli::ObjectUrl, String> {
    crate::cli::ObjectUrl::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_metrics_port_binds_to_loopback_only() {
        assert_eq!(
            parse_metrics_addr("9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            parse_metrics_addr(":9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            parse_metrics_addr("0.0.0.0:9100").unwrap(),
            "0.0.0.0:9100".parse().unwrap()
        );
        assert!(parse_metrics_addr("nope").is_err());
    }

    #[test]
    fn rejects_bad_modes() {
        assert_eq!(parse_octal("755"), Ok(0o755));
        assert!(parse_octal("999").is_err());
        assert!(parse_octal("77777").is_err());
    }
}

//! The command line: options, `-o` mount-option form, and the mount target.
//!
//! Every long option can also be given as a mount option (`-o key=value` or
//! `-o flag`, with `_` or `-` between words), which is what fstab and
//! `mount -t fuse.s3mount` pass. mount(8)'s generic options are accepted and
//! ignored where they mean nothing to a FUSE daemon.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

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

    /// Owner of all files and directories (default: the user running s3mount).
    #[arg(long)]
    pub uid: Option<u32>,

    /// Group of all files and directories (default: the group running s3mount).
    #[arg(long)]
    pub gid: Option<u32>,

    /// Permission bits of files, in octal.
    #[arg(long, value_parser = parse_octal, default_value = "644")]
    pub file_mode: u16,

    /// Permission bits of directories, in octal.
    #[arg(long, value_parser = parse_octal, default_value = "755")]
    pub dir_mode: u16,

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

    /// Keep object data on local disk in DIR, across remounts: a second
    /// read of the same object version is served from disk (off by default).
    #[arg(long, value_name = "DIR")]
    pub data_cache: Option<PathBuf>,

    /// Most disk --data-cache may use (default: a tenth of the free space of
    /// its filesystem; 5% of the disk is always left free).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub data_cache_size: Option<u64>,

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

/// Parses a byte size: `65536`, `64K`, `8M`, `8MiB`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 8M or 512MiB"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}' has an unknown unit; use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("'{s}' is not a usable size"))
}

/// A byte count for people: `512B`, `1.5KiB`, `3.0GiB` (the units
/// `parse_size` reads).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        Ok(0)
    } else {
        parse_size(s)
    }
}

/// Generic mount(8) options that mean nothing to this daemon.
fn is_ignored_mount_option(opt: &str) -> bool {
    matches!(
        opt,
        "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail"
            | "rw"
            | "suid"
            | "nosuid"
            | "dev"
            | "nodev"
            | "exec"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "norelatime"
            | "strictatime"
            | "async"
            | "dirsync"
            | "sync"
            | "nodiratime"
            | "diratime"
            | "lazytime"
            | "silent"
            | "loud"
            | "owner"
            | "noowner"
            | "group"
            | "nogroup"
            | "loop"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
        || opt.starts_with("user=")
}

/// Rewrites `-o a=b,c` into `--a=b --c`, so every option has one parser.
pub fn expand_mount_options(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        let list = if text == "-o" {
            match iter.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => {
                    return Err("-o needs a value, such as -o allow_other,metadata_ttl=60".into())
                }
            }
        } else if let Some(rest) = text
            .strip_prefix("-o")
            .filter(|r| !r.is_empty() && !text.starts_with("--"))
        {
            rest.to_owned()
        } else {
            out.push(arg);
            continue;
        };
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if is_ignored_mount_option(opt) {
                continue;
            }
            if opt == "ro" {
                out.push("--read-only".into());
                continue;
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let key = key.replace('_', "-");
            out.push(match value {
                Some(v) => format!("--{key}={v}").into(),
                None => format!("--{key}").into(),
            });
        }
    }
    Ok(out)
}

/// Loads `--env-file` (if the command line has one) into the environment.
/// Runs before the command line is parsed, so options that default from the
/// environment (`--endpoint-url` from `AWS_ENDPOINT_URL`) see the file.
pub fn load_env_file(args: &[OsString]) -> Result<(), String> {
    let mut path = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--env-file" {
            path = iter.next().map(PathBuf::from);
        } else if let Some(p) = text.strip_prefix("--env-file=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read --env-file {}: {e}; give a readable file of KEY=VALUE lines",
            path.display()
        )
    })?;
    // Logging is not set up yet; this goes straight to stderr.
    if let Some(warning) = env_file_exposure(&path) {
        eprintln!("s3mount: warning: {warning}");
    }
    for (key, value) in parse_env_file(&text).map_err(|line| {
        format!(
            "--env-file {} line {line} is not KEY=VALUE (no `export`, as for systemd's EnvironmentFile=); fix it or comment it out with #",
            path.display()
        )
    })? {
        // Single-threaded still: nothing else reads the environment yet.
        std::env::set_var(key, value);
    }
    Ok(())
}

/// A warning when `path`, which holds credentials, can be read by users
/// other than its owner.
fn env_file_exposure(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "--env-file {} can be read by other users (mode {:o}) and holds credentials; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
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

/// `KEY=VALUE` lines as systemd's EnvironmentFile= reads them: blank lines
/// and `#`/`;` comments skipped, optional surrounding quotes. A shell-style
/// `export` line is refused: systemd would ignore it, so the same file would
/// mean different things to a unit and to fstab. Returns the number of the
/// first bad line on error.
fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(i + 1);
        }
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        vars.push((key.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

/// A parsed mount target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    /// Normalised key prefix: empty, or ending in `/`.
    pub prefix: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let rest = s.strip_prefix("s3://").unwrap_or(s);
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(format!(
                "'{s}' names no bucket; give BUCKET or BUCKET/PREFIX, e.g. my-bucket/data"
            ));
        }
        if bucket
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c == '\\')
        {
            return Err(format!("'{bucket}' is not a valid bucket name; bucket names use letters, digits, '.', '-' and '_'"));
        }
        Ok(Target {
            bucket: bucket.to_owned(),
            prefix: crate::names::normalize_prefix(prefix),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("b").unwrap(),
            Target {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Target::parse("b/p").unwrap(),
            Target {
                bucket: "b".into(),
                prefix: "p/".into()
            }
        );
        assert_eq!(
            Target::parse("s3://b/p/q/").unwrap(),
            Target {
                bucket: "b".into(),
                prefix: "p/q/".into()
            }
        );
        assert!(Target::parse("s3://").is_err());
        assert!(Target::parse("/p").is_err());
        assert!(Target::parse("bad bucket/p").is_err());
    }

    #[test]
    fn expands_mount_options_into_long_options() {
        let out = expand_mount_options(os(&[
            "s3mount",
            "b",
            "/m",
            "-o",
            "allow_other,metadata_ttl=5,_netdev,x-systemd.automount,ro",
            "-oendpoint_url=http://h:1",
        ]))
        .unwrap();
        assert_eq!(
            out,
            os(&[
                "s3mount",
                "b",
                "/m",
                "--allow-other",
                "--metadata-ttl=5",
                "--read-only",
                "--endpoint-url=http://h:1"
            ])
        );
    }

    #[test]
    fn mount_options_parse_like_long_options() {
        let args = expand_mount_options(os(&[
            "s3mount",
            "b/p",
            "/m",
            "-o",
            "file_mode=600,uid=7,force_path_style",
        ]))
        .unwrap();
        let parsed = Args::try_parse_from(args).unwrap();
        assert_eq!(parsed.file_mode, 0o600);
        assert_eq!(parsed.uid, Some(7));
        assert!(parsed.connection.force_path_style);
    }

    #[test]
    fn unknown_mount_option_is_an_error() {
        let args =
            expand_mount_options(os(&["s3mount", "b", "/m", "-o", "bogus_thing=1"])).unwrap();
        assert!(Args::try_parse_from(args).is_err());
        assert!(expand_mount_options(os(&["s3mount", "b", "/m", "-o"])).is_err());
    }

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
    fn an_env_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("s3mount-envfile-{}", std::process::id()));
        std::fs::write(&path, "AWS_SECRET_ACCESS_KEY=x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(env_file_exposure(&path).unwrap().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(env_file_exposure(&path), None);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn parses_env_files_like_systemd() {
        let vars = parse_env_file(
            "# credentials\nAWS_ACCESS_KEY_ID=GK1\n\nAWS_SECRET_ACCESS_KEY=\"s e\"\nS3MOUNT_OPTIONS='-o x=1'\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            vec![
                ("AWS_ACCESS_KEY_ID".to_owned(), "GK1".to_owned()),
                ("AWS_SECRET_ACCESS_KEY".to_owned(), "s e".to_owned()),
                ("S3MOUNT_OPTIONS".to_owned(), "-o x=1".to_owned()),
            ]
        );
        assert_eq!(parse_env_file("A=1\nnot a line\n"), Err(2));
        assert_eq!(parse_env_file("BAD KEY=1\n"), Err(1));
        assert_eq!(parse_env_file("export A=1\n"), Err(1));
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("8X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn rejects_bad_modes() {
        assert_eq!(parse_octal("755"), Ok(0o755));
        assert!(parse_octal("999").is_err());
        assert!(parse_octal("77777").is_err());
    }
}

//! `s3mount doctor BUCKET[/PREFIX]`: a health and sizing check of a target.
//!
//! It checks that the credentials work and may list and read, measures what
//! the mount's performance rests on (time to first byte, ranged GET
//! throughput with 1, 8 and 32 connections, LIST page latency), describes the
//! objects under the prefix (sampled when there are many), and turns the
//! figures into plain advice. Nothing is written to the bucket.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::json;

use crate::byte_sizes::{human_bytes, parse_size};
use crate::cli::{Connection, Target};
use crate::store::{ObjectMeta, ObjectStore, S3Store};

/// Check credentials, latency, throughput and object sizes of a target.
#[derive(Debug, Parser)]
#[command(name = "s3mount doctor", bin_name = "s3mount doctor")]
pub struct DoctorArgs {
    /// What to check: BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX.
    pub target: String,
    #[command(flatten)]
    pub connection: Connection,
    /// Read KEY=VALUE lines into the environment first (as for mounting).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<std::path::PathBuf>,
    /// Stop listing after this many objects and describe that sample.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_objects: u64,
    /// Bytes each throughput measurement reads at most.
    #[arg(long, value_parser = parse_size, default_value = "256M", value_name = "SIZE")]
    pub transfer: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// From this many objects (or this long a full listing), every new machine
/// listing the prefix costs enough that a shared listing snapshot pays.
const SNAPSHOT_FROM_OBJECTS: u64 = 100_000;
const SNAPSHOT_FROM_SECONDS: f64 = 30.0;

/// Ranged GET size of the throughput measurements (the mount's default part).
const PART: u64 = 8 << 20;
/// Objects from this size amortise the per-request latency well.
const WELL_SIZED: u64 = 128 << 20;

pub fn run(argv: &[OsString]) -> ExitCode {
    if let Err(e) = crate::cli::load_env_file(argv) {
        eprintln!("s3mount: error: {e}");
        return ExitCode::from(2);
    }
    let args = DoctorArgs::parse_from(argv);
    let rt = match super::command_runtime(4) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(examine(&args)) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.to_json()).unwrap()
                );
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("s3mount: error: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, Default)]
struct Throughput {
    connections: usize,
    bytes: u64,
    seconds: f64,
}

impl Throughput {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.seconds.max(1e-9)
    }
}

#[derive(Debug, Default)]
struct Report {
    target: String,
    endpoint: String,
    can_read: Option<bool>,
    list_page_ms: Vec<f64>,
    objects: u64,
    prefixes_seen: u64,
    total_bytes: u64,
    sampled: bool,
    sizes: Vec<u64>,
    probe_key: Option<String>,
    /// Whether the endpoint enforces conditional writes (None: not found out).
    conditional_writes: Option<bool>,
    head_ms: Vec<f64>,
    first_byte_ms: Vec<f64>,
    throughput: Vec<Throughput>,
    notes: Vec<String>,
}

async fn examine(args: &DoctorArgs) -> Result<Report, String> {
    let target = Target::parse(&args.target)?;
    let settings = args.connection.settings(&target.bucket);
    let progress = DoctorProgress::new(!args.json);
    progress.say("checking credentials and listing permission");
    // The same checks and messages as a mount: credentials, bucket, ListBucket.
    let store = Arc::new(
        crate::mount::preflight::preflight(&settings, &target)
            .await
            .map_err(|e| e.0)?,
    );
    let mut report = Report {
        target: format!("s3://{}/{}", target.bucket, target.prefix),
        endpoint: store.endpoint().to_owned(),
        ..Report::default()
    };

    // What claims across mounts rest on (one write that creates nothing on
    // an endpoint that enforces conditions, and is taken back on one that
    // does not).
    progress.say("checking whether the endpoint enforces conditional writes");
    match store.probe_conditions(&target.prefix).await {
        Ok(enforced) => report.conditional_writes = Some(enforced),
        Err(e) => report.notes.push(format!(
            "cannot find out whether the endpoint enforces conditional writes ({e}); a read-write mount needs s3:PutObject"
        )),
    }

    // The listing: page latency, and the objects it describes.
    let mut continuation = None;
    let mut largest: Option<ObjectMeta> = None;
    loop {
        let start = Instant::now();
        let page = store
            .list_page(&target.prefix, None, continuation, Some(1000))
            .await
            .map_err(|e| format!("listing {} failed: {e}", report.target))?;
        report
            .list_page_ms
            .push(start.elapsed().as_secs_f64() * 1000.0);
        for object in &page.objects {
            if object.key.ends_with('/') {
                report.prefixes_seen += 1;
                continue;
            }
            report.objects += 1;
            report.total_bytes += object.size;
            report.sizes.push(object.size);
            if largest.as_ref().is_none_or(|l| object.size > l.size) {
                largest = Some(object.clone());
            }
        }
        progress.say(&format!("listing: {} objects", report.objects));
        continuation = page.next;
        if continuation.is_none() {
            break;
        }
        if report.objects >= args.max_objects {
            report.sampled = true;
            break;
        }
    }
    report.sizes.sort_unstable();

    // Latency and throughput, on the largest object seen.
    let Some(probe) = largest.filter(|o| o.size > 0) else {
        report.notes.push(
            "no non-empty object under the prefix: read latency and throughput were not measured"
                .into(),
        );
        progress.done();
        return Ok(report);
    };
    report.probe_key = Some(probe.key.clone());
    progress.say("measuring HEAD and first-byte latency");
    for _ in 0..5 {
        let start = Instant::now();
        match store.head(&probe.key).await {
            Ok(_) => report.head_ms.push(start.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                report.can_read = Some(false);
                report.notes.push(format!(
                    "HEAD {} failed: {e}; the mount needs s3:GetObject to read files",
                    probe.key
                ));
                progress.done();
                return Ok(report);
            }
        }
    }
    for _ in 0..5 {
        match store.time_to_first_byte(&probe.key).await {
            Ok(t) => report.first_byte_ms.push(t.as_secs_f64() * 1000.0),
            Err(e) => {
                report.can_read = Some(false);
                report.notes.push(format!(
                    "GET {} failed: {e}; the mount needs s3:GetObject to read files",
                    probe.key
                ));
                progress.done();
                return Ok(report);
            }
        }
    }
    report.can_read = Some(true);
    for connections in [1usize, 8, 32] {
        progress.say(&format!(
            "measuring throughput with {connections} connection(s)"
        ));
        match measure_throughput(&store, &probe, connections, args.transfer).await {
            Ok(t) => report.throughput.push(t),
            Err(e) => {
                report.notes.push(format!(
                    "throughput with {connections} connections failed: {e}"
                ));
                break;
            }
        }
    }
    progress.done();
    Ok(report)
}

/// GETs one throughput measurement sends at most.
const MAX_REQUESTS: usize = 64;

/// Reads ranges of `object` with `connections` parallel GETs until about
/// `budget` bytes (at least one part per connection, at most
/// [`MAX_REQUESTS`] in all) have arrived.
async fn measure_throughput(
    store: &Arc<S3Store>,
    object: &ObjectMeta,
    connections: usize,
    budget: u64,
) -> Result<Throughput, String> {
    // Smaller parts when the budget is small, so 32 connections still fit.
    let part = PART
        .min(object.size)
        .min((budget / connections as u64).max(1 << 20));
    let parts_in_object = object.size.div_ceil(part);
    // On a tiny object the byte budget would mean millions of requests;
    // a few dozen measure it as well.
    let rounds =
        (budget / (part * connections as u64)).clamp(1, (MAX_REQUESTS / connections).max(1) as u64);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections as u64 {
        let store = store.clone();
        let object = object.clone();
        tasks.spawn(async move {
            let mut bytes = 0u64;
            for round in 0..rounds {
                // Spread the workers over the object, as read-ahead does.
                let index = (worker + round * connections as u64) % parts_in_object;
                let from = index * part;
                let to = (from + part).min(object.size);
                let pieces: Vec<u64> = (from..to)
                    .step_by(1 << 20)
                    .map(|at| (to - at).min(1 << 20))
                    .collect();
                store
                    .get_range(&object.key, &object.etag, from..to, &pieces, &mut |piece| {
                        bytes += piece.len() as u64
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<u64, String>(bytes)
        });
    }
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        bytes += joined.map_err(|e| e.to_string())??;
    }
    Ok(Throughput {
        connections,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[s.len() / 2])
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

/// Size classes for the distribution.
const SIZE_CLASSES: [(u64, &str); 6] = [
    (64 << 10, "< 64 KiB"),
    (1 << 20, "64 KiB - 1 MiB"),
    (16 << 20, "1 - 16 MiB"),
    (128 << 20, "16 - 128 MiB"),
    (1 << 30, "128 MiB - 1 GiB"),
    (u64::MAX, ">= 1 GiB"),
];

impl Report {
    fn size_classes(&self) -> Vec<(&'static str, u64)> {
        let mut counts = vec![0u64; SIZE_CLASSES.len()];
        for size in &self.sizes {
            let i = SIZE_CLASSES
                .iter()
                .position(|(limit, _)| size < limit)
                .unwrap_or(SIZE_CLASSES.len() - 1);
            counts[i] += 1;
        }
        SIZE_CLASSES
            .iter()
            .zip(counts)
            .map(|((_, name), n)| (*name, n))
            .collect()
    }

    fn rate(&self, connections: usize) -> Option<f64> {
        self.throughput
            .iter()
            .find(|t| t.connections == connections)
            .map(Throughput::mib_per_s)
    }

    /// Plain advice drawn from the figures.
    fn advice(&self) -> Vec<String> {
        let mut advice = Vec::new();
        let ttfb = median(&self.first_byte_ms);
        let median_size = percentile(&self.sizes, 0.5);
        if let (Some(size), Some(ttfb)) = (median_size, ttfb) {
            if size < WELL_SIZED && self.objects >= 10 {
                advice.push(format!(
                    "Half the objects are {} or smaller. Every file read pays the ~{ttfb:.0} ms first-byte latency, so reading many small files is latency-bound; objects of about 128 MiB or more amortise it. Where you control the writer, batch small records into larger objects, and read several files in parallel.",
                    human_bytes(size)
                ));
            }
        }
        if let (Some(one), Some(eight)) = (self.rate(1), self.rate(8)) {
            if eight > 1.5 * one {
                advice.push(format!(
                    "One connection reads {one:.0} MiB/s, eight read {eight:.0} MiB/s: this path rewards parallelism. Keep --max-concurrent-requests at 32 or more and let sequential readers reach a large --max-read-window (64M or more)."
                ));
            } else {
                advice.push(format!(
                    "One connection already reads {one:.0} MiB/s and more connections add little ({eight:.0} MiB/s with eight): the network or the server is the limit, not the request pattern."
                ));
            }
        }
        if let (Some(eight), Some(many)) = (self.rate(8), self.rate(32)) {
            if many < 1.1 * eight {
                advice.push(format!(
                    "Beyond 8 connections throughput stops growing ({many:.0} MiB/s with 32); a lower --max-concurrent-requests (16) saves memory without costing speed."
                ));
            }
        }
        if let Some(page) = median(&self.list_page_ms) {
            let pages = self.list_page_ms.len();
            let full = page * pages as f64 / 1000.0;
            if page > 200.0 || full > 5.0 || self.sampled {
                advice.push(format!(
                    "A LIST page takes {page:.0} ms{}; listings are slow here. Use a longer --metadata-ttl (e.g. 3600) so directories are listed rarely; the catalog keeps listings across remounts and serves stale ones while refreshing.",
                    if self.sampled { ", and the prefix holds more objects than were sampled" } else { "" }
                ));
            } else {
                advice.push(format!(
                    "Listing is quick ({page:.0} ms a page, {full:.1} s for the whole prefix): the default --metadata-ttl of 60 s is fine; lower it if other writers must show up sooner."
                ));
            }
        }
        if let Some((seconds, at_least)) = self.full_listing_s() {
            if self.wants_snapshot() {
                advice.push(format!(
                    "A full listing of the prefix takes {}{seconds:.0} s ({}{} billed LIST pages), and every new machine pays it again: publish the catalog once (s3mount catalog publish BUCKET/PREFIX s3://BUCKET/KEY, or catalog import-inventory from an S3 Inventory report) and mount with --catalog-snapshot s3://BUCKET/KEY.",
                    if at_least { "at least " } else { "" },
                    if at_least { "over " } else { "" },
                    self.list_page_ms.len()
                ));
            }
        }
        if let Some(ttfb) = ttfb {
            if ttfb > 50.0 {
                advice.push(format!(
                    "First-byte latency is {ttfb:.0} ms: random reads (Parquet, ORC, databases) cost at least that per request. Run close to the bucket's region."
                ));
            }
        }
        advice
    }

    /// How long listing the whole prefix takes, from the pages read (at
    /// least that when the listing was cut at --max-objects): one flat
    /// listing; a mount listing directory by directory makes more pages.
    fn full_listing_s(&self) -> Option<(f64, bool)> {
        let page = median(&self.list_page_ms)?;
        let pages = self.list_page_ms.len() as f64;
        Some((page * pages / 1000.0, self.sampled))
    }

    /// Whether a shared listing snapshot is worth publishing.
    fn wants_snapshot(&self) -> bool {
        self.objects >= SNAPSHOT_FROM_OBJECTS
            || self.sampled
            || self
                .full_listing_s()
                .is_some_and(|(s, _)| s >= SNAPSHOT_FROM_SECONDS)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "target": self.target,
            "endpoint": self.endpoint,
            "permissions": { "list": true, "read": self.can_read },
            "list_page_ms": { "median": median(&self.list_page_ms), "pages": self.list_page_ms.len() },
            "full_listing": self.full_listing_s().map(|(s, at_least)| json!({"seconds": s, "at_least": at_least})),
            "catalog_snapshot_recommended": self.wants_snapshot(),
            "objects": {
                "count": self.objects,
                "sampled": self.sampled,
                "total_bytes": self.total_bytes,
                "directory_markers": self.prefixes_seen,
                "size_p50": percentile(&self.sizes, 0.5),
                "size_p90": percentile(&self.sizes, 0.9),
                "size_max": self.sizes.last(),
                "size_classes": self.size_classes().iter().map(|(n, c)| json!({"class": n, "count": c})).collect::<Vec<_>>(),
            },
            "probe_object": self.probe_key,
            "conditional_writes": self.conditional_writes,
            "head_ms": median(&self.head_ms),
            "first_byte_ms": median(&self.first_byte_ms),
            "throughput": self.throughput.iter().map(|t| json!({
                "connections": t.connections,
                "bytes": t.bytes,
                "seconds": t.seconds,
                "mib_per_s": t.mib_per_s(),
            })).collect::<Vec<_>>(),
            "notes": self.notes,
            "advice": self.advice(),
        })
    }

    fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        let mut rows: Vec<(String, String)> = vec![
            ("target".into(), self.target.clone()),
            ("endpoint".into(), self.endpoint.clone()),
            ("credentials".into(), "ok".into()),
            ("list permission".into(), "ok".into()),
            (
                "conditional writes".into(),
                match self.conditional_writes {
                    Some(true) => "enforced (renames are claims one mount wins)".into(),
                    Some(false) => "NOT enforced: run one loader per prefix".into(),
                    None => "unknown (see notes)".into(),
                },
            ),
            (
                "read permission".into(),
                match self.can_read {
                    Some(true) => "ok".into(),
                    Some(false) => "DENIED or failing (see notes)".into(),
                    None => "not checked (no object)".into(),
                },
            ),
            (
                "LIST page latency".into(),
                format!(
                    "{} median of {} page(s)",
                    ms(median(&self.list_page_ms)),
                    self.list_page_ms.len()
                ),
            ),
            (
                "full listing".into(),
                match self.full_listing_s() {
                    Some((s, at_least)) => format!(
                        "{}{s:.1} s{}",
                        if at_least { "at least " } else { "" },
                        if self.wants_snapshot() {
                            ": publish a catalog snapshot (see advice)"
                        } else {
                            ""
                        }
                    ),
                    None => "-".into(),
                },
            ),
            ("HEAD latency".into(), ms(median(&self.head_ms))),
            ("GET first byte".into(), ms(median(&self.first_byte_ms))),
        ];
        for t in &self.throughput {
            rows.push((
                format!(
                    "GET throughput, {} connection{}",
                    t.connections,
                    if t.connections == 1 { "" } else { "s" }
                ),
                format!(
                    "{:.0} MiB/s ({} in {:.2} s)",
                    t.mib_per_s(),
                    human_bytes(t.bytes),
                    t.seconds
                ),
            ));
        }
        rows.push((
            "objects".into(),
            format!(
                "{}{} totalling {}",
                self.objects,
                if self.sampled {
                    " (sample; more exist)"
                } else {
                    ""
                },
                human_bytes(self.total_bytes)
            ),
        ));
        if !self.sizes.is_empty() {
            rows.push((
                "object size p50 / p90 / max".into(),
                format!(
                    "{} / {} / {}",
                    human_bytes(percentile(&self.sizes, 0.5).unwrap_or(0)),
                    human_bytes(percentile(&self.sizes, 0.9).unwrap_or(0)),
                    human_bytes(*self.sizes.last().unwrap_or(&0))
                ),
            ));
            for (class, count) in self.size_classes() {
                rows.push((format!("  {class}"), count.to_string()));
            }
        }
        if let Some(key) = &self.probe_key {
            rows.push(("measured on".into(), key.clone()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::from("s3mount doctor\n\n");
        for (k, v) in &rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("\nnote: {note}\n"));
        }
        let advice = self.advice();
        if !advice.is_empty() {
            out.push_str("\nadvice:\n");
            for a in advice {
                out.push_str(&format!("  - {a}\n"));
            }
        }
        out
    }
}

/// One progress line on stderr, rewritten in place, when it is a terminal.
struct DoctorProgress {
    on: bool,
}

impl DoctorProgress {
    fn new(wanted: bool) -> Self {
        DoctorProgress {
            on: wanted && std::io::stderr().is_terminal(),
        }
    }

    fn say(&self, what: &str) {
        if self.on {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{what} ...");
            let _ = err.flush();
        }
    }

    fn done(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sizes: Vec<u64>, rates: &[(usize, f64)], page_ms: f64, ttfb: f64) -> Report {
        Report {
            objects: sizes.len() as u64,
            sizes,
            list_page_ms: vec![page_ms],
            first_byte_ms: vec![ttfb],
            throughput: rates
                .iter()
                .map(|(c, r)| Throughput {
                    connections: *c,
                    bytes: (*r * (1 << 20) as f64) as u64,
                    seconds: 1.0,
                })
                .collect(),
            ..Report::default()
        }
    }

    #[test]
    fn advice_follows_the_figures() {
        let small = report(
            vec![1 << 20; 100],
            &[(1, 80.0), (8, 600.0), (32, 610.0)],
            400.0,
            60.0,
        );
        let advice = small.advice().join("\n");
        assert!(advice.contains("latency-bound"), "{advice}");
        assert!(advice.contains("rewards parallelism"), "{advice}");
        assert!(advice.contains("stops growing"), "{advice}");
        assert!(advice.contains("--metadata-ttl"), "{advice}");
        assert!(advice.contains("Run close"), "{advice}");

        let big = report(
            vec![1 << 30; 20],
            &[(1, 500.0), (8, 520.0), (32, 900.0)],
            20.0,
            10.0,
        );
        let advice = big.advice().join("\n");
        assert!(!advice.contains("latency-bound"), "{advice}");
        assert!(advice.contains("add little"), "{advice}");
        assert!(!advice.contains("stops growing"), "{advice}");
        assert!(advice.contains("Listing is quick"), "{advice}");
        assert!(!advice.contains("--catalog-snapshot"), "{advice}");
    }

    #[test]
    fn a_snapshot_is_advised_for_big_or_slowly_listed_prefixes() {
        let mut many = report(vec![1; 10], &[], 100.0, 1.0);
        many.objects = 150_000;
        many.list_page_ms = vec![100.0; 150];
        let advice = many.advice().join("\n");
        assert!(advice.contains("--catalog-snapshot"), "{advice}");
        assert!(advice.contains("takes 15 s (150 billed"), "{advice}");
        let mut cut = report(vec![1; 10], &[], 50.0, 1.0);
        cut.sampled = true;
        assert!(cut.advice().join("\n").contains("at least"));
        let few = report(vec![1; 10], &[], 50.0, 1.0);
        assert!(!few.advice().join("\n").contains("--catalog-snapshot"));
    }

    #[test]
    fn sizes_fall_into_classes() {
        let r = report(
            vec![10, 100 << 10, 2 << 20, 200 << 20, 2 << 30],
            &[],
            1.0,
            1.0,
        );
        let classes: Vec<u64> = r.size_classes().iter().map(|(_, c)| *c).collect();
        assert_eq!(classes, vec![1, 1, 1, 0, 1, 1]);
        assert_eq!(percentile(&[1, 2, 3], 0.5), Some(2));
    }
}

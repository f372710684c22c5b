//! Listing benchmark: `ls -l`, `find` and `du -s` through s3mount next to
//! listing the same prefixes directly with ListObjectsV2 paging, in the same
//! run, through a proxy that adds S3-like latency and counts requests.
//! The mounts keep no POSIX metadata (`--posix-metadata off`), so this is
//! the cost of listings alone; what learning modes and times adds is
//! benches/posix.rs's.
//!
//!   scripts/bench-catalog.sh   (BENCH_LIST_ENTRIES, BENCH_RUNS, BENCH_LATENCY_MS)

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::proxy::Faults;
use support::*;

/// What every mount of this benchmark is given: listings, no attributes.
const LISTINGS_ONLY: &str = "--posix-metadata=off";

/// Uploads `keys` (tiny bodies) with bounded concurrency.
/// Lists `prefix` directly, all pages; returns (seconds, pages, keys+prefixes).
fn direct_list(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
) -> (f64, u64, u64) {
    let t = Instant::now();
    let (mut pages, mut items, mut token) = (0, 0, None);
    loop {
        let out = block_on(
            client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_owned))
                .set_continuation_token(token)
                .send(),
        )
        .unwrap();
        pages += 1;
        items += out.contents().len() as u64 + out.common_prefixes().len() as u64;
        token = out.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    (t.elapsed().as_secs_f64(), pages, items)
}

/// Runs a shell command and returns (seconds, requests seen at the proxy).
fn timed(proxy: &support::proxy::FaultProxy, script: &str) -> (f64, usize) {
    let before = proxy.requests().len();
    let t = Instant::now();
    let (code, _, err) = sh(script);
    assert_eq!(code, 0, "{script}: {err}");
    (t.elapsed().as_secs_f64(), proxy.requests().len() - before)
}

fn main() {
    let entries = env_u64("BENCH_LIST_ENTRIES", 20_000);
    let runs = env_u64("BENCH_RUNS", 3) as usize;
    let latency = Duration::from_millis(env_u64("BENCH_LATENCY_MS", 20));
    let s3 = TestS3::start();
    let b = s3.bucket("catbench");
    eprintln!("bench: creating {entries} keys in one directory and 10,000 in 100 directories");
    b.put_many(
        (0..entries).map(|i| format!("big/f{i:06}")).collect(),
        |_| vec![b'x'; 10],
    );
    b.put_many(
        (0..100)
            .flat_map(|d| (0..100).map(move |f| format!("tree/d{d:02}/f{f:03}")))
            .collect(),
        |_| vec![b'x'; 10],
    );
    let (proxy, endpoint) = s3.proxied();
    proxy.set(Faults {
        first_byte_delay: latency,
        ..Faults::default()
    });
    let client = client_for(&endpoint);

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut add = |what: &str, mount_s: f64, reqs: f64, direct_s: f64, direct_reqs: f64| {
        rows.push((
            what.to_owned(),
            format!("{:.3} s / {:.0} req", mount_s, reqs),
            format!("{:.3} s / {:.0} req", direct_s, direct_reqs),
            format!("{:.2}x", mount_s / direct_s),
        ));
    };

    let (mut cold, mut warm, mut remount, mut direct) = (vec![], vec![], vec![], vec![]);
    let (mut cold_r, mut warm_r, mut remount_r, mut direct_p) = (0, 0, 0, 0);
    for _ in 0..runs {
        let (secs, pages, items) = direct_list(&client, &b.name, "big/", Some("/"));
        assert_eq!(items, entries);
        direct.push(secs);
        direct_p = pages;
        let cache = TempDir::new("catbench-cache");
        let cache_arg = format!("--cache-dir={}", cache.path().display());
        let ls = |m: &Mounted| format!("ls -l '{}' | wc -l", m.path().join("big").display());
        {
            let m = Mounted::start_at(&endpoint, &b.name, &[&cache_arg, LISTINGS_ONLY]);
            let (s, r) = timed(&proxy, &ls(&m));
            cold.push(s);
            cold_r = r;
            let (s, r) = timed(&proxy, &ls(&m));
            warm.push(s);
            warm_r = r;
        }
        let m = Mounted::start_at(&endpoint, &b.name, &[&cache_arg, LISTINGS_ONLY]);
        let (s, r) = timed(&proxy, &ls(&m));
        remount.push(s);
        remount_r = r;
    }
    let d = median(direct);
    add(
        &format!("ls -l of {entries} entries, cold"),
        median(cold),
        cold_r as f64,
        d,
        direct_p as f64,
    );
    add(
        &format!("ls -l of {entries} entries, warm"),
        median(warm),
        warm_r as f64,
        d,
        direct_p as f64,
    );
    add(
        &format!("ls -l of {entries} entries, after remount"),
        median(remount),
        remount_r as f64,
        d,
        direct_p as f64,
    );

    let (mut find, mut du, mut direct) = (vec![], vec![], vec![]);
    let (mut find_r, mut du_r, mut direct_p) = (0, 0, 0);
    for _ in 0..runs {
        let (secs, pages, items) = direct_list(&client, &b.name, "tree/", None);
        assert_eq!(items, 10_000);
        direct.push(secs);
        direct_p = pages;
        let m = Mounted::start_at(&endpoint, &b.name, &[LISTINGS_ONLY]);
        let (s, r) = timed(
            &proxy,
            &format!("find '{}' | wc -l", m.path().join("tree").display()),
        );
        find.push(s);
        find_r = r;
        drop(m);
        let m = Mounted::start_at(&endpoint, &b.name, &[LISTINGS_ONLY]);
        let (s, r) = timed(
            &proxy,
            &format!("du -s '{}'", m.path().join("tree").display()),
        );
        du.push(s);
        du_r = r;
    }
    let d = median(direct);
    add(
        "find over 10,000 files in 100 dirs, cold",
        median(find),
        find_r as f64,
        d,
        direct_p as f64,
    );
    add(
        "du -s over 10,000 files in 100 dirs, cold",
        median(du),
        du_r as f64,
        d,
        direct_p as f64,
    );

    // A new machine: mount and `find`, listing from S3 or starting from a
    // snapshot another node published (`--catalog-snapshot`).
    let published = TempDir::new("catbench-publish");
    let published_arg = format!("--cache-dir={}", published.path().display());
    {
        let m = Mounted::start_at(
            &endpoint,
            &format!("{}/tree", b.name),
            &[&published_arg, LISTINGS_ONLY],
        );
        timed(&proxy, &format!("find '{}' | wc -l", m.path().display()));
    }
    let snapshot = format!("s3://{}/snapshots/tree.s3msnap", b.name);
    let out = s3mount_command(&endpoint)
        .args(["catalog", "publish"])
        .args(endpoint_args(&endpoint))
        .arg(&published_arg)
        .arg(format!("{}/tree", b.name))
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot_arg = format!("--catalog-snapshot={snapshot}");
    let (mut listed, mut from_snapshot, mut direct) = (vec![], vec![], vec![]);
    let (mut listed_r, mut snapshot_r, mut direct_p) = (0, 0, 0);
    for _ in 0..runs {
        let (secs, pages, _) = direct_list(&client, &b.name, "tree/", None);
        direct.push(secs);
        direct_p = pages;
        for (with_snapshot, times, reqs) in [
            (false, &mut listed, &mut listed_r),
            (true, &mut from_snapshot, &mut snapshot_r),
        ] {
            let cache = TempDir::new("catbench-new");
            let cache_arg = format!("--cache-dir={}", cache.path().display());
            let mut args = vec![cache_arg.as_str(), "--metadata-ttl=3600", LISTINGS_ONLY];
            if with_snapshot {
                args.push(&snapshot_arg);
            }
            let before = proxy.requests().len();
            let t = Instant::now();
            let m = Mounted::start_at(&endpoint, &format!("{}/tree", b.name), &args);
            let (code, out, _) = sh(&format!("find '{}' | wc -l", m.path().display()));
            assert_eq!((code, out.trim()), (0, "10101"));
            times.push(t.elapsed().as_secs_f64());
            *reqs = proxy.requests().len() - before;
        }
    }
    let d = median(direct);
    add(
        "new machine: mount + find, listing S3",
        median(listed),
        listed_r as f64,
        d,
        direct_p as f64,
    );
    add(
        "new machine: mount + find, --catalog-snapshot",
        median(from_snapshot),
        snapshot_r as f64,
        d,
        direct_p as f64,
    );

    let (quiet, busy) = read_latency_during_listing(&s3, &b, &endpoint, entries);

    println!();
    println!(
        "s3mount listing benchmark: {} ms first-byte latency, median of {runs} runs; direct = ListObjectsV2 paging of the same prefix (flat for the tree); ratio = s3mount time / direct time, lower is better",
        latency.as_millis()
    );
    println!(
        "{:<48} {:>20} {:>20} {:>8}",
        "workload", "s3mount", "direct", "ratio"
    );
    for (what, m, d, r) in rows {
        println!("{what:<48} {m:>20} {d:>20} {r:>8}");
    }
    println!();
    println!("4 KiB O_DIRECT reads of a cached file (daemon round trips): p50 / p99 / max in ms");
    println!("{:<48} {:>30}", "quiet mount", quiet);
    println!(
        "{:<48} {:>30}",
        format!("while {entries} listing entries are stored"),
        busy
    );
}

/// Latency of small reads answered by the daemon (from its block cache:
/// O_DIRECT skips the kernel's page cache) on a quiet mount, and while a
/// cold `ls -l` of the big directory stores its listing in SQLite. Catalog
/// database work runs off the async workers, so the reads should not wait
/// for the listing.
fn read_latency_during_listing(
    s3: &TestS3,
    b: &TestBucket,
    endpoint: &Endpoint,
    entries: u64,
) -> (String, String) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let size = 64u64 << 20;
    b.put("lat/r.bin", random_bytes(size as usize, 5));
    let _ = s3;
    let m = Mounted::start_at(endpoint, &b.name, &[LISTINGS_ONLY]);
    let path = m.path().join("lat/r.bin");
    // Into the daemon's block cache.
    assert_eq!(std::fs::read(&path).unwrap().len() as u64, size);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("O_DIRECT open");
    let mut raw = vec![0u8; 8192];
    let at = raw.as_ptr().align_offset(4096);
    let sample = |until: &dyn Fn(usize) -> bool, raw: &mut Vec<u8>| {
        let mut lat = Vec::new();
        let mut rng = 11u64;
        while !until(lat.len()) {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            let off = ((rng >> 16) % (size / 4096)) * 4096;
            let t = Instant::now();
            file.read_exact_at(&mut raw[at..at + 4096], off).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        format!(
            "{:.2} / {:.2} / {:.2} ({} reads)",
            pct(0.5),
            pct(0.99),
            lat[lat.len() - 1],
            lat.len()
        )
    };
    let quiet = sample(&|n| n >= 2000, &mut raw);
    let done = std::sync::atomic::AtomicBool::new(false);
    let busy = std::thread::scope(|scope| {
        let lister = scope.spawn(|| {
            let out = sh(&format!(
                "ls -l '{}' | wc -l",
                m.path().join("big").display()
            ));
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            out
        });
        let busy = sample(
            &|n| n >= 200 && done.load(std::sync::atomic::Ordering::Relaxed),
            &mut raw,
        );
        let (code, out, _) = lister.join().unwrap();
        assert_eq!(code, 0);
        assert!(out.trim().parse::<u64>().unwrap() > entries);
        busy
    });
    (quiet, busy)
}

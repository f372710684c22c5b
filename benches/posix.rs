//! POSIX metadata benchmark: what keeping modes, owners and times costs.
//!
//! - `rsync -a` of many small files to the mount, first and second run
//!   (the second must send nothing and store nothing), next to the same
//!   second run to a local directory.
//! - `ls -l` of a directory another client wrote, under each
//!   `--posix-metadata` setting, cold and after a remount, next to what a
//!   client does directly: ListObjectsV2 pages (all `off` needs), and
//!   those plus one HEAD per object, 128 at a time (what learning costs).
//!
//! All through a proxy that adds S3-like latency and counts requests.
//!
//!   scripts/bench-posix.sh   (BENCH_RSYNC_FILES, BENCH_RSYNC_RUNS, BENCH_LIST_ENTRIES,
//!                             BENCH_RUNS, BENCH_LATENCY_MS)

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::proxy::{FaultProxy, Faults};
use support::*;

/// Runs a shell command; returns (seconds, requests, PUTs and copies).
fn timed(proxy: &FaultProxy, script: &str) -> (f64, usize, usize) {
    let before = proxy.requests().len();
    let t = Instant::now();
    let (code, _, err) = sh(script);
    assert_eq!(code, 0, "{script}: {err}");
    let secs = t.elapsed().as_secs_f64();
    let new = &proxy.requests()[before..];
    let puts = new.iter().filter(|r| r.starts_with("PUT ")).count();
    (secs, new.len(), puts)
}

fn timed_local(script: &str) -> f64 {
    let t = Instant::now();
    let (code, _, err) = sh(script);
    assert_eq!(code, 0, "{script}: {err}");
    t.elapsed().as_secs_f64()
}

/// Lists `prefix` directly; with `head`, HEADs every object too, 128 at a
/// time. Returns (seconds, requests).
fn direct_ls(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str, head: bool) -> (f64, u64) {
    let t = Instant::now();
    let (mut requests, mut keys, mut token) = (0u64, Vec::new(), None);
    loop {
        let out = block_on(
            client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .delimiter("/")
                .set_continuation_token(token)
                .send(),
        )
        .unwrap();
        requests += 1;
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        token = out.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    if head {
        requests += keys.len() as u64;
        block_on(async {
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
            let tasks: Vec<_> = keys
                .into_iter()
                .map(|key| {
                    let (c, bucket, gate) = (client.clone(), bucket.to_owned(), gate.clone());
                    tokio::spawn(async move {
                        let _permit = gate.acquire().await.unwrap();
                        c.head_object()
                            .bucket(bucket)
                            .key(key)
                            .send()
                            .await
                            .unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
    (t.elapsed().as_secs_f64(), requests)
}

fn make_tree(root: &Path, files: usize) {
    let (code, _, err) = sh(&format!(
        "python3 - '{}' {files} <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, 'd%03d' % (i % 100))
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, 'f%05d' % i)
    with open(p, 'wb') as f:
        f.write(os.urandom(100 + i % 900))
    os.chmod(p, 0o755 if i % 10 == 0 else 0o644)
    os.utime(p, (1500000000 + i, 1500000000 + i))
PY",
        root.display()
    ));
    assert_eq!(code, 0, "{err}");
}

fn main() {
    let files = env_u64("BENCH_RSYNC_FILES", 10_000) as usize;
    let entries = env_u64("BENCH_LIST_ENTRIES", 20_000) as usize;
    let runs = env_u64("BENCH_RUNS", 3) as usize;
    // A first rsync of 10,000 files pays four requests a file (upload, the
    // time set on rsync's temporary file, and the rename's copy and
    // delete): one run by default.
    let rsync_runs = env_u64("BENCH_RSYNC_RUNS", 1) as usize;
    let latency = Duration::from_millis(env_u64("BENCH_LATENCY_MS", 20));
    let s3 = TestS3::start();
    let b = s3.bucket("posixbench");
    eprintln!("bench: {entries} objects written by another client, {files} local files for rsync");
    b.put_many(
        (0..entries).map(|i| format!("foreign/f{i:06}")).collect(),
        |i| vec![b'x'; 10 + i % 100],
    );
    let src = TempDir::new("posixbench-src");
    make_tree(src.path(), files);
    let (proxy, endpoint) = s3.proxied();
    proxy.set(Faults {
        first_byte_delay: latency,
        ..Faults::default()
    });
    let client = client_for(&endpoint);
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut add = |what: String, mount: (f64, f64, f64), direct: (f64, f64)| {
        rows.push([
            what,
            format!("{:.2} s / {:.0} req / {:.0} PUT", mount.0, mount.1, mount.2),
            format!("{:.2} s / {:.0} req", direct.0, direct.1),
            format!("{:.2}x", mount.0 / direct.0),
        ]);
    };

    // rsync -a, first and second run, in a fresh bucket prefix each run.
    let (mut first, mut second, mut local) = (vec![], vec![], vec![]);
    let (mut first_rp, mut second_rp) = ((0, 0), (0, 0));
    for run in 0..rsync_runs {
        let m = Mounted::start_at(&endpoint, &b.name, &[]);
        let dst = m.path().join(format!("backup{run}"));
        let rsync = format!("rsync -a '{}/' '{}/'", src.path().display(), dst.display());
        let (s, r, p) = timed(&proxy, &rsync);
        first.push(s);
        first_rp = (r, p);
        let (s, r, p) = timed(&proxy, &rsync);
        second.push(s);
        second_rp = (r, p);
        assert_eq!(p, 0, "the second rsync stored something");
        let copy = TempDir::new("posixbench-local");
        let local_rsync = format!(
            "rsync -a '{}/' '{}/'",
            src.path().display(),
            copy.path().display()
        );
        timed_local(&local_rsync);
        local.push(timed_local(&local_rsync));
    }
    let local = median(local);
    add(
        format!("rsync -a of {files} files, first run"),
        (median(first), first_rp.0 as f64, first_rp.1 as f64),
        (local, 0.0),
    );
    add(
        format!("rsync -a of {files} files, second run"),
        (median(second), second_rp.0 as f64, second_rp.1 as f64),
        (local, 0.0),
    );

    // ls -l of the foreign directory under each setting.
    for setting in ["off", "lazy", "full"] {
        let (mut cold, mut warm, mut direct) = (vec![], vec![], vec![]);
        let (mut cold_r, mut warm_r, mut direct_r) = (0, 0, 0);
        for _ in 0..runs {
            let (s, r) = direct_ls(&client, &b.name, "foreign/", setting != "off");
            direct.push(s);
            direct_r = r;
            let cache = TempDir::new("posixbench-cache");
            let args = [
                format!("--cache-dir={}", cache.path().display()),
                format!("--posix-metadata={setting}"),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let ls =
                |m: &Mounted| format!("ls -l '{}' | wc -l", m.path().join("foreign").display());
            {
                let m = Mounted::start_at(&endpoint, &b.name, &args);
                let (s, r, _) = timed(&proxy, &ls(&m));
                cold.push(s);
                cold_r = r;
            }
            let m = Mounted::start_at(&endpoint, &b.name, &args);
            let (s, r, _) = timed(&proxy, &ls(&m));
            warm.push(s);
            warm_r = r;
        }
        let d = (median(direct), direct_r as f64);
        add(
            format!("ls -l of {entries} foreign, {setting}, cold"),
            (median(cold), cold_r as f64, 0.0),
            d,
        );
        add(
            format!("ls -l of {entries} foreign, {setting}, remount"),
            (median(warm), warm_r as f64, 0.0),
            d,
        );
    }

    println!();
    println!(
        "POSIX metadata, {} ms to first byte, medians of {runs} ({rsync_runs} for rsync; direct: local rsync; ListObjectsV2, plus a HEAD per object where the setting learns)",
        latency.as_millis()
    );
    println!(
        "{:<44} {:>32} {:>20} {:>8}",
        "", "s3mount", "direct", "ratio"
    );
    for [what, m, d, r] in rows {
        println!("{what:<44} {m:>32} {d:>20} {r:>8}");
    }
}

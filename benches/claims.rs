//! Claims benchmark: loaders renaming dropped files out of `incoming/` on
//! 1 and 3 mounts of a bucket on an endpoint that enforces write
//! conditions (a private SeaweedFS), next to the same renames done
//! directly with aws-sdk-s3 without conditions (CopyObject, then
//! DeleteObject), in the same run, through a proxy that adds S3-like
//! latency to every response and counts the requests.
//!
//!   scripts/bench-claims.sh   (BENCH_CLAIM_FILES, BENCH_RUNS, BENCH_LATENCY_MS)

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::proxy::Faults;
use support::*;

/// `loaders` threads spread over `mounts`, all renaming every name of
/// `names` from incoming/ to processing/ in the same order (each file is
/// claimed once: the others get ENOENT). Returns (seconds, claims won).
fn claim_through_mounts(mounts: &[PathBuf], loaders: usize, names: &[String]) -> (f64, usize) {
    let won = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for l in 0..loaders {
            let root = &mounts[l % mounts.len()];
            let won = &won;
            s.spawn(move || {
                for name in names {
                    let from = root.join("incoming").join(name);
                    let to = root.join("processing").join(name);
                    match std::fs::rename(&from, &to) {
                        Ok(()) => {
                            won.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => panic!("rename {name}: {e}"),
                    }
                }
            });
        }
    });
    (t.elapsed().as_secs_f64(), won.into_inner())
}

/// The same renames by `loaders` threads straight through the SDK, each
/// taking every `loaders`-th name: a copy and a delete, no conditions.
fn claim_directly(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    loaders: usize,
    names: &[String],
) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for l in 0..loaders {
            s.spawn(move || {
                for name in names.iter().skip(l).step_by(loaders) {
                    block_on(
                        client
                            .copy_object()
                            .bucket(bucket)
                            .copy_source(format!("{bucket}/incoming/{name}"))
                            .key(format!("processing/{name}"))
                            .send(),
                    )
                    .unwrap();
                    block_on(
                        client
                            .delete_object()
                            .bucket(bucket)
                            .key(format!("incoming/{name}"))
                            .send(),
                    )
                    .unwrap();
                }
            });
        }
    });
    t.elapsed().as_secs_f64()
}

fn main() {
    let files = env_u64("BENCH_CLAIM_FILES", 100) as usize;
    let runs = env_u64("BENCH_RUNS", 3) as usize;
    let latency = Duration::from_millis(env_u64("BENCH_LATENCY_MS", 20));
    let s3 = TestS3::conditional();
    let (proxy, endpoint) = s3.proxied();
    proxy.set(Faults {
        first_byte_delay: latency,
        ..Faults::default()
    });
    let client = client_for(&endpoint);
    let names: Vec<String> = (0..files).map(|i| format!("f{i:05}.csv")).collect();
    println!(
        "claims of {files} files, {} ms to first byte, median of {runs} runs",
        latency.as_millis()
    );
    println!("| loaders | mounts | s3mount claims/s | requests per claim | daemon CPU ms per claim | direct claims/s (no conditions) | s3mount ÷ direct |");
    println!("|---|---|---|---|---|---|---|");
    for (loaders, mount_count) in [(1, 1), (2, 1), (4, 1), (2, 3), (4, 3)] {
        let (mut ours, mut theirs, mut requests, mut cpu) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let bucket = s3.bucket("claimbench");
            bucket.put_many(
                names.iter().map(|n| format!("incoming/{n}")).collect(),
                |_| vec![b'x'; 1024],
            );
            bucket.put("processing/", "");
            let mounts: Vec<Mounted> = (0..mount_count)
                .map(|_| Mounted::start_at(&endpoint, &bucket.name, &[]))
                .collect();
            let roots: Vec<PathBuf> = mounts.iter().map(|m| m.path()).collect();
            // Listed once before the clock starts, as a loader would have.
            for root in &roots {
                assert_eq!(names_in(&root.join("incoming")), files);
            }
            let before = proxy.requests().len();
            let daemons_cpu = || mounts.iter().map(|m| cpu_seconds(m.pid())).sum::<f64>();
            let cpu_before = daemons_cpu();
            let (secs, won) = claim_through_mounts(&roots, loaders, &names);
            cpu.push((daemons_cpu() - cpu_before) * 1000.0 / files as f64);
            assert_eq!(won, files, "each file claimed exactly once");
            requests.push((proxy.requests().len() - before) as f64 / files as f64);
            ours.push(files as f64 / secs);
            drop(mounts);

            let direct = s3.bucket("claimdirect");
            direct.put_many(
                names.iter().map(|n| format!("incoming/{n}")).collect(),
                |_| vec![b'x'; 1024],
            );
            theirs.push(files as f64 / claim_directly(&client, &direct.name, loaders, &names));
        }
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "| {loaders} | {mount_count} | {ours:.1} | {:.1} | {:.2} | {theirs:.1} | {:.2}x |",
            median(requests),
            median(cpu),
            ours / theirs
        );
    }
}

fn names_in(dir: &std::path::Path) -> usize {
    names(dir).len()
}

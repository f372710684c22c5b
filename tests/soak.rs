//! Soak: the drop-folder pipeline, analytics reads and listings, all at
//! once, for `S3MOUNT_SOAK_SECS` seconds (default 120; `scripts/soak.sh`
//! runs it for longer) while the HTTP fault proxy rotates through fault
//! phases: calm, 10% errors of every kind, heavy throttling, cut and
//! stalled bodies, and short outages (within --retry-timeout).
//!
//! It prints what it did (files moved, bytes verified, errors programs saw,
//! retries, peak RSS) and fails on any wrong byte, lost or duplicated file,
//! error seen by a program, or memory that keeps growing.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::drop_folder::{DropFolder, Names, Problem, Publish};
use support::http_proxy::{Fault, HttpFaultProxy, Kind, Rule};
use support::*;

/// Content of pipeline file `n`: derived from its number, so any reader
/// can check it.
fn file_body(n: u64) -> Vec<u8> {
    let len = match n % 20 {
        7 => (18 << 20) + (n as usize % 1000),
        _ => 500 + (n as usize * 131) % 200_000,
    };
    random_bytes(len, 1_000_000 + n)
}

fn set_phase(proxy: &HttpFaultProxy, phase: usize) -> &'static str {
    match phase % 5 {
        0 => {
            proxy.clear();
            "calm"
        }
        1 => {
            proxy.set_rules(vec![
                Rule::new(Fault::SlowDown { retry_after: None }, 0.04, &[]),
                Rule::new(Fault::Internal, 0.04, &[]),
                Rule::new(Fault::TooMany, 0.02, &[]),
            ]);
            "10% errors"
        }
        2 => {
            proxy.set_rules(vec![Rule::new(
                Fault::SlowDown {
                    retry_after: Some(1),
                },
                0.4,
                &[],
            )]);
            "throttling"
        }
        3 => {
            proxy.set_rules(vec![
                Rule::new(Fault::CutBody, 0.1, &[Kind::Get, Kind::List]),
                Rule::new(Fault::StallBody, 0.02, &[Kind::Get]),
                Rule::new(Fault::MalformedListing, 0.1, &[Kind::List]),
            ]);
            "cut, stalled and malformed bodies"
        }
        _ => {
            proxy.clear();
            proxy.down_for(Duration::from_secs(6));
            "server down 6 s"
        }
    }
}

#[test]
fn soak_pipeline_reads_and_listings_under_rotating_faults() {
    let secs = env_u64("S3MOUNT_SOAK_SECS", 120);
    let s3 = TestS3::start();
    let b = s3.bucket("soak");
    let analytics = random_bytes(256 << 20, 90);
    b.put("data/table.bin", analytics.clone());
    b.put_many(
        (0..5000).map(|i| format!("catalog/e{i:04}")).collect(),
        |_| b"e".to_vec(),
    );
    let (proxy, endpoint) = s3.http_proxied();
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start_at(
        &endpoint,
        &b.name,
        &[
            "--memory-limit",
            "128M",
            "--read-stall-timeout",
            "2",
            "--metrics-addr",
            &addr,
        ],
    );
    let mnt = &m.path();

    let stop = AtomicBool::new(false);
    let verified = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let wrong = AtomicU64::new(0);
    let listings = AtomicU64::new(0);
    let note_error = |what: String| {
        errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("program saw an error: {what}");
    };
    let report = |problem: Problem| match problem {
        Problem::Error(e) => note_error(e),
        Problem::Wrong(w) => {
            wrong.fetch_add(1, Ordering::Relaxed);
            eprintln!("WRONG: {w}");
        }
    };
    let body = |name: &str| {
        let n: u64 = name.strip_prefix('f')?.strip_suffix(".dat")?.parse().ok()?;
        Some(file_body(n))
    };
    let folder = DropFolder::new(mnt, &body, &report);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rss_samples = Vec::new();

    let outcome = std::thread::scope(|scope| {
        // The pipeline: one producer, publishing files atomically until
        // told to stop, and the loader.
        let pipeline = scope.spawn(|| {
            let names = (0u64..)
                .map(|n| format!("f{n:06}.dat"))
                .take_while(|_| !stop.load(Ordering::Relaxed));
            folder.run(
                Publish::WriteThenRename,
                vec![Box::new(names) as Names],
                Duration::from_secs(secs + 600),
            )
        });
        // Analytics: random ranges of one big object, checked.
        scope.spawn(|| {
            use std::io::{Read, Seek, SeekFrom};
            let mut rng = 7u64;
            while !stop.load(Ordering::Relaxed) {
                let mut f = match std::fs::File::open(mnt.join("data/table.bin")) {
                    Ok(f) => f,
                    Err(e) => {
                        note_error(format!("open table.bin: {e}"));
                        continue;
                    }
                };
                for _ in 0..16 {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = 64 * 1024 + (rng >> 40) as usize % (4 << 20);
                    let at = (rng >> 20) as usize % (analytics.len() - len);
                    let mut buf = vec![0u8; len];
                    match f
                        .seek(SeekFrom::Start(at as u64))
                        .and_then(|_| f.read_exact(&mut buf))
                    {
                        Ok(()) if buf == analytics[at..at + len] => {
                            verified.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        Ok(()) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                            eprintln!("WRONG BYTES in table.bin at {at}+{len}");
                        }
                        Err(e) => note_error(format!("reading table.bin at {at}: {e}")),
                    }
                }
            }
        });
        // Listings: a 5,000-entry directory, again and again.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read_dir(mnt.join("catalog"))
                    .and_then(|d| d.collect::<Result<Vec<_>, _>>())
                {
                    Ok(entries) if entries.len() == 5000 => {
                        listings.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(entries) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                        eprintln!("WRONG LISTING of catalog/: {} entries", entries.len());
                    }
                    Err(e) => note_error(format!("listing catalog/: {e}")),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });

        let mut phase = 0;
        while Instant::now() < deadline {
            let name = set_phase(&proxy, phase);
            eprintln!("soak: phase {phase}: {name}");
            let until = (Instant::now() + Duration::from_secs(12)).min(deadline);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(500));
                rss_samples.push(rss_kib(m.pid()));
            }
            phase += 1;
        }
        proxy.clear();
        stop.store(true, Ordering::Relaxed);
        pipeline.join().expect("the pipeline")
    });
    verified.fetch_add(outcome.verified_bytes, Ordering::Relaxed);

    let metrics = scrape(&addr);
    let metrics_retries = value(&metrics, "s3mount_s3_retries_total").unwrap_or(0.0);
    let throttled = value(&metrics, "s3mount_s3_throttled_total").unwrap_or(0.0);
    let quarter = rss_samples.len() / 4;
    let early = rss_samples[..quarter.max(1)]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    let late = rss_samples[rss_samples.len() - quarter.max(1)..]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    let peak = peak_rss_kib(m.pid());
    eprintln!(
        "soak: {secs} s: produced {} files, moved {}, processed in S3 {}, verified {} MiB, program errors {}, wrong {}, listings {}, retries {}, throttled answers {}, RSS early {} MiB late {} MiB peak {} MiB",
        outcome.produced.len(),
        outcome.moved.len(),
        b.names_under("processed").len(),
        verified.load(Ordering::Relaxed) >> 20,
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        listings.load(Ordering::Relaxed),
        metrics_retries,
        throttled,
        early >> 10,
        late >> 10,
        peak >> 10,
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "wrong bytes or listings (see above)"
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "programs saw errors (see above)"
    );
    // No file lost, duplicated or left in incoming/, every byte right.
    folder.check(&b, &outcome);
    assert!(!outcome.produced.is_empty(), "nothing was produced");
    assert!(
        late <= early + 64 * 1024,
        "RSS kept growing: {} MiB early, {} MiB late",
        early >> 10,
        late >> 10
    );
}

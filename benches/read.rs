//! Read benchmark: s3mount next to the same work done directly with
//! aws-sdk-s3 (parallel ranged GETs, no FUSE), in the same run, through a
//! proxy that adds S3-like latency before each response.
//!
//!   cargo bench --bench read            (or scripts/bench-read.sh)
//!
//! Environment: BENCH_FILE_MIB (default 1024), BENCH_RUNS (default 3),
//! BENCH_LATENCY_MS (default 20), BENCH_RANDOM_READS (default 200),
//! BENCH_CONN_MIBPS (bandwidth cap per connection, 0 = none; default 0),
//! BENCH_ONLY (comma-separated sections to run: sequential, shared, random,
//! ttfb, parquet, columnar, reset, throttled, datacache; default all), BENCH_MOUNT_ARGS (extra s3mount options,
//! e.g. "--memory-limit 1G --metrics-addr 127.0.0.1:9911").
//! Figures are medians of BENCH_RUNS runs; each run mounts afresh so no
//! cache survives from the run before.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use support::proxy::{FaultProxy, Faults};
use support::*;

const MIB: u64 = 1024 * 1024;

/// Fields drop in order: the bucket is emptied before the server stops.
struct Bench {
    bucket: TestBucket,
    /// Keeps the server (if started here) alive for the whole run.
    _s3: TestS3,
    proxy: FaultProxy,
    endpoint: Endpoint,
    client: aws_sdk_s3::Client,
    size: u64,
    runs: usize,
    latency: Duration,
    /// Per-connection bandwidth cap, as S3 has one.
    conn_bytes_per_sec: Option<u64>,
    /// Extra s3mount options.
    mount_args: String,
}

impl Bench {
    fn mount(&self) -> Mounted {
        let extra: Vec<&str> = self.mount_args.split_whitespace().collect();
        Mounted::start_at(&self.endpoint, &self.bucket.name, &extra)
    }

    fn clean(&self) {
        self.proxy.set(Faults {
            first_byte_delay: self.latency,
            bytes_per_sec: self.conn_bytes_per_sec,
            ..Faults::default()
        });
    }
}

/// Reads `key` whole with `parallel` concurrent ranged GETs of `part` bytes.
async fn direct_read(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    size: u64,
    part: u64,
    parallel: usize,
) -> u64 {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    let mut off = 0;
    while off < size {
        let end = (off + part).min(size);
        let (c, b, k, sem) = (
            client.clone(),
            bucket.to_owned(),
            key.to_owned(),
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let out = c
                .get_object()
                .bucket(b)
                .key(k)
                .range(format!("bytes={off}-{}", end - 1))
                .send()
                .await
                .expect("direct GET");
            let mut body = out.body;
            let mut n = 0u64;
            while let Some(chunk) = body.try_next().await.expect("direct body") {
                n += chunk.len() as u64;
            }
            n
        }));
        off = end;
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

fn read_file(path: &std::path::Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

fn offsets(count: u64, size: u64, len: u64, seed: u64) -> Vec<u64> {
    let slots = size / len;
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % slots) * len
        })
        .collect()
}

struct Row {
    what: String,
    mount: String,
    direct: String,
    ratio: String,
}

fn row(what: &str, mount: f64, direct: f64, unit: &str, higher_is_better: bool) -> Row {
    let ratio = if higher_is_better {
        mount / direct
    } else {
        direct / mount
    };
    Row {
        what: what.into(),
        mount: format!("{mount:.1} {unit}"),
        direct: format!("{direct:.1} {unit}"),
        ratio: format!("{ratio:.2}x"),
    }
}

fn print_rows(b: &Bench, rows: &[Row]) {
    let cap = match b.conn_bytes_per_sec {
        Some(bps) => format!("{} MiB/s per connection", bps / MIB),
        None => "no bandwidth cap".into(),
    };
    println!();
    println!(
        "s3mount read benchmark: {} MiB files, {} ms first-byte latency, {cap}, median of {} runs",
        b.size / MIB,
        b.latency.as_millis(),
        b.runs
    );
    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "workload", "s3mount", "direct SDK", "ratio"
    );
    for r in rows {
        println!(
            "{:<52} {:>14} {:>14} {:>8}",
            r.what, r.mount, r.direct, r.ratio
        );
    }
}

fn main() {
    let size = env_u64("BENCH_FILE_MIB", 1024) * MIB;
    let runs = env_u64("BENCH_RUNS", 3) as usize;
    let latency = Duration::from_millis(env_u64("BENCH_LATENCY_MS", 20));
    let random_reads = env_u64("BENCH_RANDOM_READS", 200);
    let conn_mibps = env_u64("BENCH_CONN_MIBPS", 0);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let needs_big_files = [
        "sequential",
        "shared",
        "random",
        "ttfb",
        "reset",
        "throttled",
        "datacache",
    ]
    .iter()
    .any(|s| wants(s));

    let s3 = TestS3::start();
    let bucket = s3.bucket("bench");
    let files = if needs_big_files { 4 } else { 0 };
    if files > 0 {
        eprintln!("bench: uploading 4 x {} MiB of random data", size / MIB);
    }
    for i in 0..files {
        let data = random_bytes(size as usize, 100 + i);
        block_on(
            bucket
                .client
                .put_object()
                .bucket(&bucket.name)
                .key(format!("seq{i}.bin"))
                .body(ByteStream::from(data))
                .send(),
        )
        .expect("upload");
    }
    let (proxy, endpoint) = s3.proxied();
    let client = client_for(&endpoint);
    let b = Bench {
        _s3: s3,
        bucket,
        proxy,
        endpoint,
        client,
        size,
        runs,
        latency,
        conn_bytes_per_sec: (conn_mibps > 0).then_some(conn_mibps * MIB),
        mount_args: std::env::var("BENCH_MOUNT_ARGS").unwrap_or_default(),
    };
    b.clean();
    let mut rows = Vec::new();
    let mib = |bytes: u64, t: Duration| bytes as f64 / MIB as f64 / t.as_secs_f64();

    let mut extra = Vec::new();

    // Sequential, 1 reader.
    let (mut m1, mut d1) = (Vec::new(), Vec::new());
    for _ in 0..b.runs * wants("sequential") as usize {
        let m = b.mount();
        let t = Instant::now();
        let n = read_file(&m.path().join("seq0.bin"));
        m1.push(mib(n, t.elapsed()));
        drop(m);
        let t = Instant::now();
        let n = block_on(direct_read(
            &b.client,
            &b.bucket.name,
            "seq0.bin",
            b.size,
            8 * MIB,
            8,
        ));
        d1.push(mib(n, t.elapsed()));
    }
    if wants("sequential") {
        rows.push(row(
            "sequential read, 1 reader",
            median(m1),
            median(d1),
            "MiB/s",
            true,
        ));
    }

    // Sequential, 4 readers on 4 files; also the daemon's peak RSS.
    let (mut m4, mut d4, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b.runs * wants("sequential") as usize {
        let m = b.mount();
        let t = Instant::now();
        let n: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let p = m.path().join(format!("seq{i}.bin"));
                    s.spawn(move || read_file(&p))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        m4.push(mib(n, t.elapsed()));
        rss.push(peak_rss_kib(m.pid()) as f64 / 1024.0);
        drop(m);
        let t = Instant::now();
        let n: u64 = block_on(async {
            let mut hs = Vec::new();
            for i in 0..4 {
                let (c, bk) = (b.client.clone(), b.bucket.name.clone());
                let size = b.size;
                hs.push(tokio::spawn(async move {
                    direct_read(&c, &bk, &format!("seq{i}.bin"), size, 8 * MIB, 8).await
                }));
            }
            let mut total = 0;
            for h in hs {
                total += h.await.unwrap();
            }
            total
        });
        d4.push(mib(n, t.elapsed()));
    }
    if wants("sequential") {
        rows.push(row(
            "sequential read, 4 readers",
            median(m4),
            median(d4),
            "MiB/s",
            true,
        ));
        extra.push(format!(
            "{:<52} {:>11.0} MiB",
            "peak daemon RSS, 4 sequential readers",
            median(rss)
        ));
    }

    // Random 256 KiB reads: IOPS and read amplification (bytes at the proxy).
    let len = 256 * 1024;
    let (mut mi, mut di, mut amp) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..b.runs * wants("random") as usize {
        let offs = offsets(random_reads, b.size, len, 7 + run as u64);
        let m = b.mount();
        let f = std::fs::File::open(m.path().join("seq1.bin")).unwrap();
        let before = b.proxy.response_bytes();
        let t = Instant::now();
        std::thread::scope(|s| {
            for chunk in offs.chunks(offs.len().div_ceil(8)) {
                let f = &f;
                s.spawn(move || {
                    let mut buf = vec![0u8; len as usize];
                    for &o in chunk {
                        f.read_exact_at(&mut buf, o).unwrap();
                    }
                });
            }
        });
        mi.push(random_reads as f64 / t.elapsed().as_secs_f64());
        amp.push((b.proxy.response_bytes() - before) as f64 / (random_reads * len) as f64);
        drop(f);
        drop(m);
        let t = Instant::now();
        block_on(async {
            let sem = Arc::new(tokio::sync::Semaphore::new(8));
            let mut hs = Vec::new();
            for &o in &offs {
                let (c, bk, sem) = (b.client.clone(), b.bucket.name.clone(), sem.clone());
                hs.push(tokio::spawn(async move {
                    let _p = sem.acquire().await.unwrap();
                    let out = c
                        .get_object()
                        .bucket(bk)
                        .key("seq1.bin")
                        .range(format!("bytes={o}-{}", o + len - 1))
                        .send()
                        .await
                        .unwrap();
                    out.body.collect().await.unwrap().into_bytes().len()
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        });
        di.push(random_reads as f64 / t.elapsed().as_secs_f64());
    }
    if wants("random") {
        rows.push(row(
            "random 256 KiB reads, 8 threads",
            median(mi),
            median(di),
            "IOPS",
            true,
        ));
        extra.push(format!(
            "{:<52} {:>14.2}",
            "random 256 KiB reads: amplification (fetched/read)",
            median(amp)
        ));
    }

    // Time to first byte of a file not read before: cold (the directory is
    // not listed yet: LIST + GET) and warm (listing cached: just the GET).
    let (mut cold, mut warm, mut dt) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..b.runs * wants("ttfb") as usize {
        let m = b.mount();
        let mut buf = vec![0u8; 4096];
        let t = Instant::now();
        let f = std::fs::File::open(m.path().join("seq2.bin")).unwrap();
        f.read_exact_at(&mut buf, b.size / 4 + run as u64 * MIB)
            .unwrap();
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let f = std::fs::File::open(m.path().join("seq3.bin")).unwrap();
        f.read_exact_at(&mut buf, b.size / 2 + run as u64 * MIB)
            .unwrap();
        warm.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(f);
        drop(m);
        let t = Instant::now();
        block_on(async {
            let out = b
                .client
                .get_object()
                .bucket(&b.bucket.name)
                .key("seq2.bin")
                .range("bytes=0-4095")
                .send()
                .await
                .unwrap();
            out.body.collect().await.unwrap()
        });
        dt.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    if wants("ttfb") {
        let direct_ttfb = median(dt);
        rows.push(row(
            "time to first 4 KiB, directory not listed yet",
            median(cold),
            direct_ttfb,
            "ms",
            false,
        ));
        rows.push(row(
            "time to first 4 KiB, directory listed",
            median(warm),
            direct_ttfb,
            "ms",
            false,
        ));
    }
    if wants("parquet") {
        bench_parquet(&b, &mut rows, &mut extra);
    }
    if wants("columnar") {
        bench_columnar(&b, &mut extra);
    }
    if wants("reset") {
        bench_resets(&b, &mut rows);
    }
    if wants("throttled") {
        bench_throttled(&b, &mut rows);
    }
    let cached = if wants("datacache") {
        bench_data_cache(&b)
    } else {
        Vec::new()
    };
    let shared = if wants("shared") {
        bench_shared(&b)
    } else {
        Vec::new()
    };
    print_rows(&b, &rows);
    for line in extra {
        println!("{line}");
    }
    print_shared(&shared);
    if !cached.is_empty() {
        println!();
        println!("--data-cache after a remount (next to the same work on local disk; page cache dropped before each on both sides; medians; time rows: lower is better, IOPS: higher)");
        for line in cached {
            println!("{line}");
        }
    }
}

/// The disk cache of object data, each run after a remount that keeps it,
/// next to the same work on a local copy (the page cache dropped before
/// each measurement, so both sides read from disk): a pyarrow and a DuckDB
/// query over 8 Parquet files cached in part (the daemon serves them) and
/// whole (the kernel reads the cache files itself: passthrough), random
/// 256 KiB reads and `sha256sum` of a cached big file, with and without
/// passthrough, and the daemon's CPU per GiB read.
fn bench_data_cache(b: &Bench) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let work = TempDir::new("bench-datacache");
    let local = work.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let (code, _, err) = sh(&format!(
        "python3 -c \"import sys, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq\nfor f in range(8): pq.write_table(pa.table({{f'c{{i}}': pc.random(500_000) for i in range(8)}}), f'{{sys.argv[1]}}/part{{f}}.parquet', row_group_size=125_000, compression='none')\" '{}'",
        local.display()
    ));
    assert_eq!(
        code, 0,
        "cannot write Parquet files (pyarrow missing? run scripts/install-deps.sh): {err}"
    );
    for f in 0..8 {
        let name = format!("part{f}.parquet");
        b.bucket.put(
            &format!("pq/{name}"),
            std::fs::read(local.join(&name)).unwrap(),
        );
    }
    let timed = |script: &str, dir: &std::path::Path| -> f64 {
        let (code, out, err) = sh(&format!("python3 -c \"{script}\" '{}'", dir.display()));
        assert_eq!(code, 0, "{err}");
        out.trim().parse::<f64>().unwrap() * 1000.0
    };
    let pyarrow = |dir: &std::path::Path| {
        timed(
            "import sys, time, pyarrow.parquet as pq; t = time.time(); pq.read_table(sys.argv[1], columns=['c5']); print(time.time() - t)",
            dir,
        )
    };
    let duckdb = |dir: &std::path::Path| {
        timed(
            "import sys, time, duckdb; c = duckdb.connect(); t = time.time(); c.sql(f\\\"select sum(c5) from '{sys.argv[1]}/*.parquet'\\\").fetchall(); print(time.time() - t)",
            dir,
        )
    };
    // The big file, locally too, for the random reads.
    let big = work.path().join("seq0.bin");
    let data = block_on(async {
        let out = b
            .client
            .get_object()
            .bucket(&b.bucket.name)
            .key("seq0.bin")
            .send()
            .await;
        out.expect("get seq0.bin")
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
    });
    std::fs::write(&big, &data).unwrap();
    drop(data);
    let reads = 2000u64;
    let len = 256 * 1024;
    let iops = |path: &std::path::Path| -> f64 {
        let f = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; len as usize];
        let t = Instant::now();
        for off in offsets(reads, b.size, len, 77) {
            f.read_exact_at(&mut buf, off).unwrap();
        }
        reads as f64 / t.elapsed().as_secs_f64()
    };
    let sha = |path: &std::path::Path| -> f64 {
        let t = Instant::now();
        let (code, _, err) = sh(&format!("sha256sum '{}'", path.display()));
        assert_eq!(code, 0, "{err}");
        t.elapsed().as_secs_f64() * 1000.0
    };
    // Every measurement starts with the kernel's page cache dropped, so
    // both sides read from disk.
    let drop_caches = || {
        // Dirty pages (the local copy was just written) are not dropped.
        let _ = std::process::Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    };
    #[derive(Default)]
    struct Row {
        mount: Vec<f64>,
        local: Vec<f64>,
        bytes: Vec<f64>,
        cpu_per_gib: Vec<f64>,
    }
    let mut rows: Vec<(String, &'static str, Row)> = Vec::new();
    let row =
        |rows: &mut Vec<(String, &'static str, Row)>, name: String, unit: &'static str| -> usize {
            if let Some(i) = rows.iter().position(|r| r.0 == name) {
                return i;
            }
            rows.push((name, unit, Row::default()));
            rows.len() - 1
        };
    let names = [
        ("pyarrow: 1 of 8 columns, files cached in part", "ms"),
        ("DuckDB: sum of 1 of 8 columns, files cached in part", "ms"),
        ("pyarrow: 1 of 8 columns, files cached whole", "ms"),
        ("DuckDB: sum of 1 of 8 columns, files cached whole", "ms"),
        ("random 256 KiB reads of a cached file", "IOPS"),
        ("sha256sum of a cached file", "ms"),
    ];
    let ids: Vec<usize> = names
        .iter()
        .map(|(n, u)| row(&mut rows, n.to_string(), u))
        .collect();
    let measure = |rows: &mut Vec<(String, &'static str, Row)>,
                   i: usize,
                   m: &Mounted,
                   mount_side: &dyn Fn() -> f64,
                   local_side: &dyn Fn() -> f64,
                   gib: f64| {
        drop_caches();
        let (before, cpu0) = (b.proxy.response_bytes(), cpu_seconds(m.pid()));
        let v = mount_side();
        let cpu = cpu_seconds(m.pid()) - cpu0;
        let r = &mut rows[i].2;
        r.mount.push(v);
        r.bytes.push((b.proxy.response_bytes() - before) as f64);
        r.cpu_per_gib.push(cpu / gib);
        drop_caches();
        r.local.push(local_side());
    };
    let pq_gib = (0..8)
        .map(|f| {
            std::fs::metadata(local.join(format!("part{f}.parquet")))
                .unwrap()
                .len()
        })
        .sum::<u64>() as f64
        / (1u64 << 30) as f64
        / 8.0; // one column of eight
    let big_gib = b.size as f64 / (1u64 << 30) as f64;
    // Both queries over the mounted files, into rows `[pyarrow, duckdb]`.
    let queries = |rows: &mut Vec<(String, &'static str, Row)>,
                   m: &Mounted,
                   pq: &std::path::Path,
                   [p, d]: [usize; 2]| {
        measure(rows, p, m, &|| pyarrow(pq), &|| pyarrow(&local), pq_gib);
        measure(rows, d, m, &|| duckdb(pq), &|| duckdb(&local), pq_gib);
    };
    for passthrough in [true, false] {
        let tag = if passthrough {
            ""
        } else {
            " (--no-passthrough)"
        };
        for run in 0..b.runs {
            let cache = work.path().join(format!("cache{run}{tag}"));
            let mut args = vec![
                format!("--data-cache={}", cache.join("data").display()),
                format!("--cache-dir={}", cache.join("listings").display()),
            ];
            if !passthrough {
                args.push("--no-passthrough".into());
            }
            args.extend(b.mount_args.split_whitespace().map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // A first mount runs the queries (which read a part of each
            // file) and reads the big file whole.
            let first = Mounted::start_at(&b.endpoint, &b.bucket.name, &args);
            pyarrow(&first.path().join("pq"));
            duckdb(&first.path().join("pq"));
            read_file(&first.path().join("seq0.bin"));
            // Let the background writes to the disk cache finish.
            std::thread::sleep(Duration::from_secs(3));
            drop(first);
            let m = Mounted::start_at(&b.endpoint, &b.bucket.name, &args);
            let pq = m.path().join("pq");
            if passthrough {
                // Cached in part: the daemon serves them either way.
                queries(&mut rows, &m, &pq, [ids[0], ids[1]]);
            }
            let seq = m.path().join("seq0.bin");
            if passthrough {
                // The first open after a mount has the big file checked
                // whole in the background (and reads through the daemon):
                // what is measured is the opens after it.
                drop(std::fs::File::open(&seq).unwrap());
                std::thread::sleep(Duration::from_secs(5));
            }
            let random_gib = (reads * len) as f64 / (1u64 << 30) as f64;
            let i = row(&mut rows, format!("{}{tag}", names[4].0), "IOPS");
            let s = row(&mut rows, format!("{}{tag}", names[5].0), "ms");
            measure(&mut rows, i, &m, &|| iops(&seq), &|| iops(&big), random_gib);
            measure(&mut rows, s, &m, &|| sha(&seq), &|| sha(&big), big_gib);
            if passthrough {
                // Now the Parquet files are read whole, and so cached whole.
                for f in 0..8 {
                    read_file(&pq.join(format!("part{f}.parquet")));
                }
                std::thread::sleep(Duration::from_secs(3));
                drop(m);
                let m = Mounted::start_at(&b.endpoint, &b.bucket.name, &args);
                let pq = m.path().join("pq");
                // The first open after a mount checks each file whole.
                pyarrow(&pq);
                queries(&mut rows, &m, &pq, [ids[2], ids[3]]);
            }
        }
    }
    rows.into_iter()
        .filter(|(_, _, r)| !r.mount.is_empty())
        .map(|(name, unit, r)| {
            let (m, l) = (median(r.mount), median(r.local));
            // Time: lower is better; IOPS: higher is better. Either way the
            // ratio is s3mount's figure over local's.
            format!(
                "{name:<62} {m:>8.0} {unit} {l:>8.0} {unit} local  {:.2}x; {:.0} bytes from S3; daemon {:.3} CPU-s/GiB",
                m / l,
                median(r.bytes),
                median(r.cpu_per_gib)
            )
        })
        .collect()
}

/// One row of the shared-object table: throughput next to the direct
/// client, and what it cost (medians).
struct Shared {
    what: String,
    mount: f64,
    direct: String,
    ratio: String,
    fetched_per_read: f64,
    requests: f64,
    cpu_per_gib: f64,
    rss_mib: f64,
}

/// Reads `range` of `path` front to back in 1 MiB reads, at most `limit`
/// bytes a second if given; returns the bytes read.
fn read_range(path: &std::path::Path, range: std::ops::Range<u64>, limit: Option<u64>) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let started = Instant::now();
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], at).unwrap();
        at += n as u64;
        if let Some(rate) = limit {
            let due = Duration::from_secs_f64((at - range.start) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    at - range.start
}

/// Several readers of ONE object, and readers slower than the network: the
/// cases where read-ahead used to be evicted and fetched again. Each row
/// reports the bytes fetched (at the proxy) for each byte read.
fn bench_shared(b: &Bench) -> Vec<Shared> {
    const SLOW: u64 = 150 * MIB;
    let path_in = |m: &Mounted| m.path().join("seq2.bin");
    type Work<'a> = Box<dyn Fn(&Mounted) -> u64 + 'a>;
    let size = b.size;
    let split = |n: u64| -> Work {
        Box::new(move |m: &Mounted| {
            let path = path_in(m);
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..n)
                    .map(|i| {
                        let p = path.clone();
                        s.spawn(move || read_range(&p, i * size / n..(i + 1) * size / n, None))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            })
        })
    };
    let cases: Vec<(String, Work, Option<u64>)> = vec![
        (
            "4 readers, distinct quarters of one object".into(),
            split(4),
            None,
        ),
        (
            "8 readers, distinct eighths of one object".into(),
            split(8),
            None,
        ),
        (
            "2 readers of one object, started 1 s apart".into(),
            Box::new(move |m: &Mounted| {
                let path = path_in(m);
                std::thread::scope(|s| {
                    let first = s.spawn(|| read_range(&path, 0..size, None));
                    std::thread::sleep(Duration::from_secs(1));
                    let second = s.spawn(|| read_range(&path, 0..size, None));
                    first.join().unwrap() + second.join().unwrap()
                })
            }),
            None,
        ),
        (
            format!("1 reader consuming {} MiB/s", SLOW / MIB),
            Box::new(move |m: &Mounted| read_range(&path_in(m), 0..size, Some(SLOW))),
            Some(SLOW),
        ),
    ];
    let mut rows = Vec::new();
    for (what, work, limit) in cases {
        let (mut rate, mut direct, mut amp, mut reqs, mut cpu, mut rss) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..b.runs {
            let m = b.mount();
            let (bytes0, reqs0) = (b.proxy.response_bytes(), b.proxy.requests().len());
            let cpu0 = cpu_seconds(m.pid());
            let t = Instant::now();
            let read = work(&m);
            let secs = t.elapsed().as_secs_f64();
            rate.push(read as f64 / MIB as f64 / secs);
            amp.push((b.proxy.response_bytes() - bytes0) as f64 / read as f64);
            reqs.push((b.proxy.requests().len() - reqs0) as f64);
            cpu.push((cpu_seconds(m.pid()) - cpu0) / (read as f64 / (1u64 << 30) as f64));
            rss.push(peak_rss_kib(m.pid()) as f64 / 1024.0);
            drop(m);
            if limit.is_none() {
                // The best direct client: 8 MiB ranged GETs, 16 in flight,
                // reading the same number of bytes of the same object.
                let t = Instant::now();
                let mut n = 0;
                while n < read {
                    n += block_on(direct_read(
                        &b.client,
                        &b.bucket.name,
                        "seq2.bin",
                        b.size,
                        8 * MIB,
                        16,
                    ));
                }
                direct.push(n as f64 / MIB as f64 / t.elapsed().as_secs_f64());
            }
        }
        let mount = median(rate);
        let (direct, ratio) = match limit {
            Some(l) => (
                format!("{} (limit)", l / MIB),
                format!("{:.2}x", mount / (l / MIB) as f64),
            ),
            None => {
                let d = median(direct);
                (format!("{d:.1}"), format!("{:.2}x", mount / d))
            }
        };
        rows.push(Shared {
            what,
            mount,
            direct,
            ratio,
            fetched_per_read: median(amp),
            requests: median(reqs),
            cpu_per_gib: median(cpu),
            rss_mib: median(rss),
        });
    }
    rows
}

fn print_shared(rows: &[Shared]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!("one object, several or slow readers (MiB/s; ratio = s3mount / direct, higher is better; fetched/read at the proxy; daemon CPU seconds per GiB read; peak RSS)");
    println!(
        "{:<44} {:>9} {:>12} {:>7} {:>9} {:>6} {:>8} {:>9}",
        "workload", "s3mount", "direct", "ratio", "fetch/rd", "reqs", "CPU/GiB", "RSS MiB"
    );
    for r in rows {
        println!(
            "{:<44} {:>9.1} {:>12} {:>7} {:>9.3} {:>6.0} {:>8.2} {:>9.0}",
            r.what,
            r.mount,
            r.direct,
            r.ratio,
            r.fetched_per_read,
            r.requests,
            r.cpu_per_gib,
            r.rss_mib
        );
    }
}

/// Parquet: footer first, then one column of eight (pyarrow), through the
/// mount and directly from S3 with pyarrow's own S3 client.
fn bench_parquet(b: &Bench, rows: &mut Vec<Row>, extra: &mut Vec<String>) {
    let work = TempDir::new("bench-parquet");
    let local = work.path().join("wide.parquet");
    let (code, _, err) = sh(&format!(
        "python3 -c \"import sys, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq; n = 4_000_000; \
         pq.write_table(pa.table({{f'c{{i}}': pc.random(n) for i in range(8)}}), sys.argv[1], row_group_size=1_000_000, compression='none')\" '{}'",
        local.display()
    ));
    assert_eq!(
        code, 0,
        "cannot write the Parquet file (pyarrow missing? run scripts/install-deps.sh): {err}"
    );
    let parquet_size = std::fs::metadata(&local).unwrap().len();
    b.bucket.put("wide.parquet", std::fs::read(&local).unwrap());
    let (mut pm, mut pd, mut pbytes) = (Vec::new(), Vec::new(), Vec::new());
    let query = "import sys, time, pyarrow.parquet as pq; t = time.time(); pq.read_table(sys.argv[1], columns=['c5']{fs}); print(time.time() - t)";
    for _ in 0..b.runs {
        let m = b.mount();
        let before = b.proxy.response_bytes();
        let (code, out, err) = sh(&format!(
            "python3 -c \"{}\" '{}'",
            query.replace("{fs}", ""),
            m.path().join("wide.parquet").display()
        ));
        assert_eq!(code, 0, "{err}");
        pm.push(out.trim().parse::<f64>().unwrap() * 1000.0);
        pbytes.push((b.proxy.response_bytes() - before) as f64);
        drop(m);
        let fs = format!(
            ", filesystem=__import__('pyarrow.fs').fs.S3FileSystem(access_key='{}', secret_key='{}', endpoint_override='{}', scheme='http', region='{}')",
            b.endpoint.access_key,
            b.endpoint.secret_key,
            b.endpoint.url.trim_start_matches("http://"),
            b.endpoint.region
        );
        let (code, out, err) = sh(&format!(
            "python3 -c \"{}\" '{}/wide.parquet'",
            query.replace("{fs}", &fs),
            b.bucket.name
        ));
        assert_eq!(code, 0, "{err}");
        pd.push(out.trim().parse::<f64>().unwrap() * 1000.0);
    }
    rows.push(row(
        "Parquet: footer + 1 of 8 columns (pyarrow)",
        median(pm),
        median(pd),
        "ms",
        false,
    ));
    extra.push(format!(
        "{:<52} {:>13.1}%",
        format!(
            "Parquet projection: fetched share of the {} MiB file",
            parquet_size / MIB
        ),
        median(pbytes) / parquet_size as f64 * 100.0
    ));
}

/// Cold columnar reads: one column of 40 summed (DuckDB) or read (pyarrow)
/// from Parquet files of two row groups, with column chunks of about 0.5,
/// 2 and 8 MB, each run on a fresh mount. Bytes fetched (at the proxy) ÷
/// bytes of the column chunks the query needs, and the query's time next
/// to the same query on the local files (page cache warm there).
fn bench_columnar(b: &Bench, extra: &mut Vec<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/columnar.py");
    let py = |args: &str| {
        let (code, out, err) = sh(&format!("python3 {script} {args}"));
        assert_eq!(
            code, 0,
            "columnar.py {args} failed (pyarrow or duckdb missing? run scripts/install-deps.sh): {err}"
        );
        out.trim().to_owned()
    };
    extra.push(format!(
        "cold Parquet, 1 of 40 columns, fresh mount each run (medians of {}):",
        b.runs
    ));
    extra.push(format!(
        "  {:<34} {:>16} {:>10} {:>10} {:>8}",
        "chunks, engine", "fetched/needed", "ms", "local ms", "ratio"
    ));
    for (label, chunk, files) in [
        ("0.5 MB", MIB / 2, 4),
        ("2 MB", 2 * MIB, 2),
        ("8 MB", 8 * MIB, 1),
    ] {
        let local = TempDir::new("bench-columnar");
        py(&format!(
            "write '{}' {chunk} {files}",
            local.path().display()
        ));
        let prefix = format!("columnar-{chunk}");
        for f in 0..files {
            let name = format!("part{f}.parquet");
            let data = std::fs::read(local.path().join(&name)).unwrap();
            block_on(
                b.bucket
                    .client
                    .put_object()
                    .bucket(&b.bucket.name)
                    .key(format!("{prefix}/{name}"))
                    .body(ByteStream::from(data))
                    .send(),
            )
            .expect("upload");
        }
        let needed: f64 = py(&format!("needed '{}' c5", local.path().display()))
            .parse()
            .unwrap();
        for engine in ["duckdb", "pyarrow"] {
            let (mut ratio, mut ms, mut local_ms) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..b.runs {
                let m = b.mount();
                let dir = m.path().join(&prefix);
                let before = b.proxy.response_bytes();
                let secs: f64 = py(&format!("{engine} '{}' c5", dir.display()))
                    .parse()
                    .unwrap();
                ratio.push((b.proxy.response_bytes() - before) as f64 / needed);
                ms.push(secs * 1000.0);
                drop(m);
                let secs: f64 = py(&format!("{engine} '{}' c5", local.path().display()))
                    .parse()
                    .unwrap();
                local_ms.push(secs * 1000.0);
            }
            let (ms, local_ms) = (median(ms), median(local_ms));
            extra.push(format!(
                "  {:<34} {:>15.2}x {:>10.0} {:>10.0} {:>7.2}x",
                format!("{label} chunks x {}, {engine}", files * 2),
                median(ratio),
                ms,
                local_ms,
                ms / local_ms
            ));
        }
    }
}

/// A connection reset every 16 MiB: correct data (the read does not fail),
/// time against a clean read. Clean and reset reads alternate so that both
/// see the same machine load.
fn bench_resets(b: &Bench, rows: &mut Vec<Row>) {
    let (mut clean, mut reset) = (Vec::new(), Vec::new());
    for _ in 0..b.runs {
        for with_resets in [false, true] {
            let m = b.mount();
            if with_resets {
                b.proxy.set(Faults {
                    first_byte_delay: b.latency,
                    bytes_per_sec: b.conn_bytes_per_sec,
                    reset_after: Some(16 * MIB),
                    ..Faults::default()
                });
            }
            let t = Instant::now();
            let n = read_file(&m.path().join("seq0.bin"));
            let rate = n as f64 / MIB as f64 / t.elapsed().as_secs_f64();
            if with_resets { &mut reset } else { &mut clean }.push(rate);
            b.clean();
            drop(m);
        }
    }
    let (clean, reset) = (median(clean), median(reset));
    let mut r = row(
        "s3mount, 1 reader: reset every 16 MiB vs clean",
        reset,
        clean,
        "MiB/s",
        true,
    );
    r.direct = format!("{} (clean)", r.direct);
    r.ratio = format!("{:.2}x time", clean / reset);
    rows.push(r);
}

/// One reader of 1 GiB while 10% of the requests answer 503 SlowDown, next
/// to the same read with no fault, both through the HTTP fault proxy in
/// front of the latency proxy; and the direct client under the same faults.
fn bench_throttled(b: &Bench, rows: &mut Vec<Row>) {
    use support::http_proxy::{Fault, HttpFaultProxy, Rule};
    let upstream = b.endpoint.url.trim_start_matches("http://").to_string();
    let http = HttpFaultProxy::start(&upstream);
    let endpoint = Endpoint {
        url: http.url(),
        ..b.endpoint.clone()
    };
    // The direct client retries as a careful S3 client would.
    let direct_client = aws_sdk_s3::Client::from_conf(
        client_for(&endpoint)
            .config()
            .to_builder()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(10))
            .build(),
    );
    let slow_down = || vec![Rule::new(Fault::SlowDown { retry_after: None }, 0.10, &[])];
    let (mut clean, mut faulty, mut direct_clean, mut direct_faulty) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..b.runs {
        for with_faults in [false, true] {
            let extra: Vec<&str> = b.mount_args.split_whitespace().collect();
            let m = Mounted::start_at(&endpoint, &b.bucket.name, &extra);
            if with_faults {
                http.set_rules(slow_down());
            }
            let t = Instant::now();
            let n = read_file(&m.path().join("seq0.bin"));
            let took = t.elapsed().as_secs_f64();
            assert_eq!(n, b.size, "short read through the faults");
            if with_faults { &mut faulty } else { &mut clean }.push(took);
            http.clear();
            drop(m);
            if with_faults {
                http.set_rules(slow_down());
            }
            let t = Instant::now();
            block_on(direct_read(
                &direct_client,
                &b.bucket.name,
                "seq0.bin",
                b.size,
                8 * MIB,
                8,
            ));
            let took = t.elapsed().as_secs_f64();
            if with_faults {
                &mut direct_faulty
            } else {
                &mut direct_clean
            }
            .push(took);
            http.clear();
        }
    }
    let (clean, faulty) = (median(clean), median(faulty));
    let (direct_clean, direct_faulty) = (median(direct_clean), median(direct_faulty));
    rows.push(Row {
        what: "1 reader, 10% 503 SlowDown: time ÷ clean time".into(),
        mount: format!("{:.2}x ({faulty:.1} s)", faulty / clean),
        direct: format!(
            "{:.2}x ({direct_faulty:.1} s)",
            direct_faulty / direct_clean
        ),
        ratio: format!("{:.2}x", (direct_faulty / direct_clean) / (faulty / clean)),
    });
}

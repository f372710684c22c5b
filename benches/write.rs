//! Write benchmark: changing files through s3mount next to what a program
//! without it would do, in the same run, through a proxy that adds S3-like
//! latency before each response and counts the bytes each way.
//!
//!   cargo bench --bench write            (or scripts/bench-write.sh)
//!
//! Rows:
//! - append 1 MiB to a large object (BENCH_OBJECT_MIB, default 1024):
//!   s3mount (`>>`-style open, write, close: a server-side copy of the old
//!   bytes plus one new part) against downloading the object and uploading
//!   it again with aws-sdk-s3 (8 MiB ranged GETs and parts, 16 at a time);
//! - sqlite3 inserting BENCH_SQLITE_ROWS rows (default 10,000) in 100
//!   transactions, on the mount against on local disk.
//!
//! Environment: BENCH_RUNS (default 3), BENCH_LATENCY_MS (default 20).
//! Figures are medians of BENCH_RUNS runs, each on a fresh mount. For
//! times, the ratio is s3mount ÷ the other (lower is better for s3mount).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use support::proxy::{FaultProxy, Faults};
use support::*;

const MIB: u64 = 1024 * 1024;
const PART: u64 = 8 * MIB;
const PARALLEL: usize = 16;

/// What one measured action cost.
#[derive(Default, Clone, Copy)]
struct Cost {
    seconds: f64,
    /// Bytes through the proxy, both ways, headers included.
    bytes: u64,
    requests: usize,
    /// s3mount's CPU time (0 for work done without it).
    cpu: f64,
}

fn measure(proxy: &FaultProxy, pid: Option<u32>, work: impl FnOnce()) -> Cost {
    let (up, down, reqs) = (
        proxy.request_bytes(),
        proxy.response_bytes(),
        proxy.requests().len(),
    );
    let cpu = pid.map_or(0.0, cpu_seconds);
    let started = Instant::now();
    work();
    Cost {
        seconds: started.elapsed().as_secs_f64(),
        bytes: proxy.request_bytes() - up + proxy.response_bytes() - down,
        requests: proxy.requests().len() - reqs,
        cpu: pid.map_or(0.0, |p| cpu_seconds(p) - cpu),
    }
}

fn median_of(costs: &[Cost], f: impl Fn(&Cost) -> f64) -> f64 {
    median(costs.iter().map(f).collect())
}

/// Downloads `key` with parallel ranged GETs, then uploads it plus
/// `extra` as a new multipart object `to`: an append without a mount.
async fn download_and_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    size: u64,
    extra: &[u8],
    to: &str,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut gets = Vec::new();
    for start in (0..size).step_by(PART as usize) {
        let end = (start + PART).min(size);
        let (c, b, k, sem) = (
            client.clone(),
            bucket.to_owned(),
            key.to_owned(),
            sem.clone(),
        );
        gets.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let out = c
                .get_object()
                .bucket(b)
                .key(k)
                .range(format!("bytes={start}-{}", end - 1))
                .send()
                .await
                .expect("GET");
            out.body.collect().await.expect("body").into_bytes()
        }));
    }
    let mut data = Vec::with_capacity(size as usize + extra.len());
    for g in gets {
        data.extend_from_slice(&g.await.unwrap());
    }
    data.extend_from_slice(extra);
    let id = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(to)
        .send()
        .await
        .expect("create multipart")
        .upload_id()
        .unwrap()
        .to_owned();
    let data = bytes::Bytes::from(data);
    let mut puts = Vec::new();
    for (i, start) in (0..data.len()).step_by(PART as usize).enumerate() {
        let end = (start + PART as usize).min(data.len());
        let body = data.slice(start..end);
        let (c, b, k, id, sem) = (
            client.clone(),
            bucket.to_owned(),
            to.to_owned(),
            id.clone(),
            sem.clone(),
        );
        puts.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let out = c
                .upload_part()
                .bucket(b)
                .key(k)
                .upload_id(id)
                .part_number(i as i32 + 1)
                .body(ByteStream::from(body))
                .send()
                .await
                .expect("upload part");
            CompletedPart::builder()
                .part_number(i as i32 + 1)
                .e_tag(out.e_tag().unwrap_or_default())
                .build()
        }));
    }
    let mut parts = Vec::new();
    for p in puts {
        parts.push(p.await.unwrap());
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(to)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart");
}

fn sqlite_script(rows: u64) -> String {
    let mut sql = String::from("create table t(id integer primary key, v text);\n");
    for tx in 0..100 {
        sql.push_str("begin;\n");
        for i in 0..rows / 100 {
            let id = tx * (rows / 100) + i;
            sql.push_str(&format!(
                "insert into t values({id}, 'row {id} of the benchmark');\n"
            ));
        }
        sql.push_str("commit;\n");
    }
    sql
}

fn run_sqlite(db: &std::path::Path, script: &std::path::Path) {
    let (code, _, err) = sh(&format!(
        "sqlite3 '{}' < '{}'",
        db.display(),
        script.display()
    ));
    assert_eq!(code, 0, "sqlite3 failed: {err}");
}

fn main() {
    let object = env_u64("BENCH_OBJECT_MIB", 1024) * MIB;
    let runs = env_u64("BENCH_RUNS", 3) as usize;
    let latency = Duration::from_millis(env_u64("BENCH_LATENCY_MS", 20));
    let rows = env_u64("BENCH_SQLITE_ROWS", 10_000);

    let s3 = TestS3::start();
    let bucket = s3.bucket("wbench");
    let (proxy, endpoint) = s3.proxied();
    proxy.set(Faults {
        first_byte_delay: latency,
        ..Faults::default()
    });
    let client = client_for(&endpoint);
    eprintln!(
        "bench: uploading a {} MiB object of random data",
        object / MIB
    );
    bucket.put("base.log", random_bytes(object as usize, 42));
    let extra = random_bytes(MIB as usize, 43);

    let mut mounted_appends = Vec::new();
    let mut direct_appends = Vec::new();
    for run in 0..runs {
        // Each run appends to its own copy of the base object.
        let key = format!("run{run}.log");
        block_on(
            bucket
                .client
                .copy_object()
                .bucket(&bucket.name)
                .key(&key)
                .copy_source(format!("{}/base.log", bucket.name))
                .send(),
        )
        .expect("copy the base object");
        let m = Mounted::start_at(&endpoint, &bucket.name, &[]);
        let path = m.path().join(&key);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), object, "listed");
        let cost = measure(&proxy, Some(m.pid()), || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(&extra).unwrap();
            drop(f);
        });
        assert_eq!(
            bucket.head(&key).content_length(),
            Some((object + MIB) as i64)
        );
        mounted_appends.push(cost);
        drop(m);
        let to = format!("direct{run}.log");
        direct_appends.push(measure(&proxy, None, || {
            block_on(download_and_upload(
                &client,
                &bucket.name,
                "base.log",
                object,
                &extra,
                &to,
            ))
        }));
        assert_eq!(
            bucket.head(&to).content_length(),
            Some((object + MIB) as i64)
        );
    }

    let script_dir = TempDir::new("wbench-sql");
    let script = script_dir.path().join("load.sql");
    std::fs::write(&script, sqlite_script(rows)).unwrap();
    let mut mounted_sqlite = Vec::new();
    let mut local_sqlite = Vec::new();
    for run in 0..runs {
        let m = Mounted::start_at(&endpoint, &bucket.name, &[]);
        let db = m.path().join(format!("bench{run}.db"));
        mounted_sqlite.push(measure(&proxy, Some(m.pid()), || run_sqlite(&db, &script)));
        drop(m);
        let local = TempDir::new("wbench-local");
        local_sqlite.push(measure(&proxy, None, || {
            run_sqlite(&local.path().join("bench.db"), &script)
        }));
    }

    println!();
    println!(
        "s3mount write benchmark: {} ms first-byte latency, median of {runs} runs (ratio: s3mount time / other time, lower is better)",
        latency.as_millis()
    );
    println!(
        "{:<44} {:>10} {:>12} {:>9} {:>9} {:>8}",
        "workload", "seconds", "bytes moved", "requests", "CPU s", "ratio"
    );
    let print = |what: &str, costs: &[Cost], against: Option<&[Cost]>| {
        let secs = median_of(costs, |c| c.seconds);
        let ratio = against.map_or(String::from("-"), |a| {
            format!("{:.3}x", secs / median_of(a, |c| c.seconds))
        });
        println!(
            "{:<44} {:>10.3} {:>10.1}Mi {:>9.0} {:>9.2} {:>8}",
            what,
            secs,
            median_of(costs, |c| c.bytes as f64) / MIB as f64,
            median_of(costs, |c| c.requests as f64),
            median_of(costs, |c| c.cpu),
            ratio
        );
    };
    let big = format!("{} MiB", object / MIB);
    print(
        &format!("append 1 MiB to {big}: s3mount"),
        &mounted_appends,
        Some(&direct_appends),
    );
    print(
        &format!("  download + re-upload {big} (SDK)"),
        &direct_appends,
        None,
    );
    print(
        &format!("sqlite3 {rows} rows, 100 transactions: s3mount"),
        &mounted_sqlite,
        Some(&local_sqlite),
    );
    print("  same on local disk", &local_sqlite, None);
}

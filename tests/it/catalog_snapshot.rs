//! Listing snapshots shared by a fleet: one mount lists a prefix and
//! publishes its catalog (`s3mount catalog publish`); a new machine's mount
//! (`--catalog-snapshot`, fresh cache directory) starts from it with one GET
//! and no LIST, shows the same tree, and picks up later changes in S3
//! through the ordinary TTL refreshes. A damaged, cut, missing or foreign
//! snapshot is reported in one line and the mount lists from S3.

use std::path::Path;
use std::time::Duration;

use crate::data_cache::object_gets;
use crate::support::*;

const SNAPSHOT_KEY: &str = "snapshots/data.s3msnap";

/// `s3mount catalog SUBCOMMAND` against `endpoint`, `args` after the
/// connection options.
fn catalog_command(
    endpoint: &Endpoint,
    subcommand: &str,
    args: &[String],
) -> std::process::Command {
    let mut cmd = s3mount_command(endpoint);
    cmd.args(["catalog", subcommand])
        .args(endpoint_args(endpoint))
        .args(args);
    cmd
}

/// `s3mount catalog import-inventory` of the report whose manifest is
/// `manifest_key`, as the snapshot of `bucket/data`.
fn import_inventory(
    endpoint: &Endpoint,
    bucket: &str,
    manifest_key: &str,
) -> std::process::Command {
    catalog_command(
        endpoint,
        "import-inventory",
        &[
            format!("s3://{bucket}/{manifest_key}"),
            format!("{bucket}/data"),
            format!("s3://{bucket}/{SNAPSHOT_KEY}"),
        ],
    )
}

/// `s3mount catalog publish` of `bucket/data` from the catalog in `cache`.
fn publish(endpoint: &Endpoint, bucket: &str, cache: &Path) -> String {
    let out = catalog_command(
        endpoint,
        "publish",
        &[
            format!("--cache-dir={}", cache.display()),
            format!("{bucket}/data"),
            format!("s3://{bucket}/{SNAPSHOT_KEY}"),
        ],
    )
    .output()
    .expect("run s3mount catalog publish");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "publish failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// HEAD requests forwarded by `proxy` so far.
fn heads(proxy: &crate::support::proxy::FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("HEAD "))
        .count()
}

/// Every path under `root`, relative and sorted, with its size.
fn tree(root: &Path) -> Vec<String> {
    let (code, out, err) = sh(&format!(
        "cd '{}' && find . -printf '%p %s %y\\n' | sort",
        root.display()
    ));
    assert_eq!(code, 0, "{err}");
    out.lines().map(str::to_owned).collect()
}

fn fresh_mount(endpoint: &Endpoint, bucket: &str, cache: &TempDir, extra: &[&str]) -> Mounted {
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    let snapshot = format!("--catalog-snapshot=s3://{bucket}/{SNAPSHOT_KEY}");
    let mut args = vec![cache_arg.as_str(), snapshot.as_str()];
    args.extend_from_slice(extra);
    Mounted::start_at(endpoint, &format!("{bucket}/data"), &args)
}

#[test]
fn a_new_machine_starts_from_a_published_snapshot_with_one_get_and_no_list() {
    let keys = env_u64("S3MOUNT_TEST_SNAPSHOT_KEYS", 100_000) as usize;
    let dirs = (keys / 100).max(1);
    let s3 = TestS3::start();
    let b = s3.bucket("snap-big");
    b.put_many(
        (0..keys)
            .map(|i| format!("data/d{:04}/k{i:06}", i % dirs))
            .collect(),
        |i| vec![b'x'; i % 7],
    );
    let (proxy, endpoint) = s3.proxied();
    let cache_a = TempDir::new("snap-a");
    let cache_arg = format!("--cache-dir={}", cache_a.path().display());
    // Listings only: what a snapshot does for attributes (one HEAD per
    // object on A, none on B) has its own test below.
    let a = Mounted::start_at(
        &endpoint,
        &format!("{}/data", b.name),
        &[&cache_arg, "--metadata-ttl=3600", "--posix-metadata=off"],
    );
    let want = tree(&a.path());
    assert_eq!(want.len(), 1 + dirs + keys, "mount A's find");
    let said = publish(&endpoint, &b.name, cache_a.path());
    assert!(
        said.contains(&format!("{} entries", dirs + keys))
            && said.contains(" 0 directories listed from S3"),
        "{said}"
    );
    drop(a);

    // A new machine: an empty cache directory.
    let cache_b = TempDir::new("snap-b");
    let heads_before = heads(&proxy);
    let (gets, lists) = (object_gets(&proxy), proxy.list_requests());
    let m = fresh_mount(
        &endpoint,
        &b.name,
        &cache_b,
        &["--metadata-ttl=3600", "--posix-metadata=off"],
    );
    let lists_at_mount = proxy.list_requests() - lists;
    let got = tree(&m.path());
    let (code, out, err) = sh(&format!("ls -lR '{}' | grep -c '^-'", m.path().display()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), keys.to_string(), "ls -lR files");
    assert!(
        got == want,
        "B's tree differs from A's ({} vs {} lines)",
        got.len(),
        want.len()
    );
    assert_eq!(object_gets(&proxy) - gets, 1, "GETs: only the snapshot");
    assert!(
        heads(&proxy) - heads_before <= 3,
        "{} HEADs on the new machine (only the snapshot's own and the mount's bucket check expected)",
        heads(&proxy) - heads_before
    );
    // The mount's own checks of the bucket list at most one page (before
    // it is live); the tree itself lists nothing.
    assert!(lists_at_mount <= 1, "{lists_at_mount} LISTs while mounting");
    assert_eq!(
        proxy.list_requests() - lists - lists_at_mount,
        0,
        "find and ls -lR listed S3"
    );
    assert!(
        m.log_text().contains("started from the catalog snapshot"),
        "{}",
        m.log_text()
    );
}

#[test]
fn a_snapshot_carries_the_attributes_its_publisher_learned_so_a_new_machine_asks_for_none() {
    let keys = 2_000;
    let s3 = TestS3::start();
    let b = s3.bucket("snap-attrs");
    b.put_many(
        (0..keys)
            .map(|i| format!("data/d{}/k{i:05}", i % 20))
            .collect(),
        |i| vec![b'x'; i % 7],
    );
    // One executable, as s3fs stores it.
    block_on(
        b.client
            .put_object()
            .bucket(&b.name)
            .key("data/d0/tool")
            .metadata("mode", (libc::S_IFREG | 0o750).to_string())
            .metadata("mtime", "1000000000")
            .body(aws_sdk_s3::primitives::ByteStream::from_static(
                b"#!/bin/sh\n",
            ))
            .send(),
    )
    .unwrap();
    let (proxy, endpoint) = s3.proxied();
    let cache_a = TempDir::new("snap-attrs-a");
    let a = Mounted::start_at(
        &endpoint,
        &format!("{}/data", b.name),
        &[&format!("--cache-dir={}", cache_a.path().display())],
    );
    let heads_before = heads(&proxy);
    let want = tree(&a.path());
    assert!(
        heads(&proxy) - heads_before > keys,
        "A learns with a HEAD per object"
    );
    drop(a);
    let said = publish(&endpoint, &b.name, cache_a.path());
    assert!(
        said.contains(&format!("{} with attributes", keys + 1)),
        "{said}"
    );

    let cache_b = TempDir::new("snap-attrs-b");
    let heads_before = heads(&proxy);
    let m = fresh_mount(&endpoint, &b.name, &cache_b, &[]);
    assert_eq!(tree(&m.path()), want);
    let (code, out, err) = sh(&format!(
        "ls -lR --time-style=+%s '{}' | grep ' tool$'",
        m.path().display()
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("-rwxr-x---") && out.contains(" 1000000000 "),
        "{out}"
    );
    assert!(
        heads(&proxy) - heads_before <= 3,
        "{} HEADs on the new machine (only the snapshot's own and the mount's bucket check expected)",
        heads(&proxy) - heads_before
    );
}

#[test]
fn changes_in_s3_after_the_snapshot_show_through_the_usual_refreshes() {
    let s3 = TestS3::start();
    let b = s3.bucket("snap-change");
    for k in ["data/a/one", "data/a/two", "data/b/three"] {
        b.put(k, "x");
    }
    let cache_a = TempDir::new("snap-ca");
    let cache_arg = format!("--cache-dir={}", cache_a.path().display());
    let a = Mounted::start(&s3, &format!("{}/data", b.name), &[&cache_arg]);
    tree(&a.path());
    drop(a);
    publish(&s3.endpoint, &b.name, cache_a.path());
    b.put("data/a/new", "y");
    b.delete("data/a/two");

    let cache_b = TempDir::new("snap-cb");
    let m = fresh_mount(&s3.endpoint, &b.name, &cache_b, &["--metadata-ttl=2"]);
    assert!(
        m.log_text().contains("started from the catalog snapshot"),
        "{}",
        m.log_text()
    );
    eventually_ok(
        "the changes to show",
        Duration::from_secs(20),
        || match names(&m.path().join("a")) {
            n if n == ["new", "one"] => Ok(()),
            n => Err(format!("a/ holds {n:?}")),
        },
    );
    assert_eq!(names(&m.path().join("b")), ["three"]);
}

#[test]
fn a_damaged_cut_missing_or_foreign_snapshot_is_reported_and_the_mount_lists_from_s3() {
    let s3 = TestS3::start();
    let b = s3.bucket("snap-bad");
    for k in ["data/a/one", "data/b/two", "other/c/three"] {
        b.put(k, "x");
    }
    let cache_a = TempDir::new("snap-ba");
    let cache_arg = format!("--cache-dir={}", cache_a.path().display());
    let a = Mounted::start(&s3, &format!("{}/data", b.name), &[&cache_arg]);
    let want = tree(&a.path());
    drop(a);
    publish(&s3.endpoint, &b.name, cache_a.path());
    let good = b.get(SNAPSHOT_KEY);

    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x5a;
    let cut = good[..good.len() - 5].to_vec();
    // A snapshot of `other/` published where `data/`'s is expected.
    let other_cache = TempDir::new("snap-bo");
    let other_arg = format!("--cache-dir={}", other_cache.path().display());
    let o = Mounted::start(&s3, &format!("{}/other", b.name), &[&other_arg]);
    tree(&o.path());
    drop(o);
    let out = catalog_command(
        &s3.endpoint,
        "publish",
        &[
            other_arg.clone(),
            format!("{}/other", b.name),
            format!("s3://{}/snapshots/other.s3msnap", b.name),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign = b.get("snapshots/other.s3msnap");

    for (what, body) in [
        ("a byte flipped", Some(flipped)),
        ("cut short", Some(cut)),
        ("another prefix's", Some(foreign)),
        ("missing", None),
    ] {
        match body {
            Some(body) => b.put(SNAPSHOT_KEY, body),
            None => b.delete(SNAPSHOT_KEY),
        }
        let cache = TempDir::new("snap-bb");
        let m = fresh_mount(&s3.endpoint, &b.name, &cache, &[]);
        let log = m.log_text();
        let lines = log
            .lines()
            .filter(|l| l.contains("not starting from the catalog snapshot"))
            .count();
        assert_eq!(lines, 1, "{what}: {log}");
        assert!(
            !log.contains("started from the catalog snapshot"),
            "{what}: {log}"
        );
        assert!(tree(&m.path()) == want, "{what}: the tree differs");
    }
}

/// A key as S3 Inventory writes it: URL-encoded.
fn inventory_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn an_inventory_report_makes_the_same_entries_as_a_listing() {
    use std::io::Write;
    let s3 = TestS3::start();
    let b = s3.bucket("snap-inv");
    let mut keys: Vec<String> = (0..300)
        .map(|i| format!("data/d{}/k{i:03}", i % 10))
        .collect();
    keys.extend(
        [
            "data/with space.txt",
            "data/été/ünï.csv",
            "data/marked/",
            "data/top",
            "data/d1/k001x",
        ]
        .map(String::from),
    );
    b.put_many(keys, |i| vec![b'z'; i % 5]);
    b.put("outside/never", "x");

    // The report, as S3 Inventory writes one (CSV, gzip, a manifest).
    let listed = block_on(async {
        let mut rows = Vec::new();
        let mut pages = b
            .client
            .list_objects_v2()
            .bucket(&b.name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            for o in page.unwrap().contents() {
                rows.push(o.clone());
            }
        }
        rows
    });
    let mut csv = Vec::new();
    for o in &listed {
        let modified = o
            .last_modified()
            .unwrap()
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap();
        writeln!(
            csv,
            "\"{}\",\"{}\",\"{}\",\"{modified}\",\"{}\",\"STANDARD\"",
            b.name,
            inventory_encode(o.key().unwrap()),
            o.size().unwrap(),
            o.e_tag().unwrap().trim_matches('"')
        )
        .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&csv).unwrap();
    let data_key = format!("inventory/{}/daily/data/part-0.csv.gz", b.name);
    b.put(&data_key, gz.finish().unwrap());
    let manifest = format!(
        r#"{{"sourceBucket": "{name}", "destinationBucket": "arn:aws:s3:::{name}",
            "version": "2016-11-30", "creationTimestamp": "{now}", "fileFormat": "CSV",
            "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass",
            "files": [{{"key": "{data_key}", "size": 1, "MD5checksum": "0"}}]}}"#,
        name = b.name,
        now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let manifest_key = format!("inventory/{}/daily/2026-12-07T00-00Z/manifest.json", b.name);
    b.put(&manifest_key, manifest);

    let out = import_inventory(&s3.endpoint, &b.name, &manifest_key)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("imported 305 keys"), "{said}");

    // What a mount listing S3 shows, next to what one started from the
    // report shows (listing nothing).
    let want = tree(&Mounted::start(&s3, &format!("{}/data", b.name), &[]).path());
    assert!(want.iter().any(|l| l.contains("été/ünï.csv")), "{want:?}");
    let (proxy, endpoint) = s3.proxied();
    let started_from_report = |tag: &str| {
        let cache = TempDir::new(tag);
        let m = fresh_mount(&endpoint, &b.name, &cache, &["--metadata-ttl=3600"]);
        let lists = proxy.list_requests();
        let got = tree(&m.path());
        assert_eq!(got, want, "{tag}");
        assert_eq!(
            proxy.list_requests() - lists,
            0,
            "{tag}: the tree listed S3"
        );
    };
    started_from_report("snap-inv-csv");

    // The same report in Parquet (AWS's column names; keys not encoded).
    let work = TempDir::new("snap-inv-pq");
    let rows: Vec<serde_json::Value> = listed
        .iter()
        .map(|o| {
            serde_json::json!([
                o.key().unwrap(),
                o.size().unwrap(),
                o.last_modified().unwrap().to_millis().unwrap(),
                o.e_tag().unwrap().trim_matches('"')
            ])
        })
        .collect();
    let json = work.path().join("rows.json");
    std::fs::write(&json, serde_json::to_vec(&rows).unwrap()).unwrap();
    let parquet = work.path().join("part-0.parquet");
    let (code, _, err) = sh(&format!(
        "python3 -c \"import json, sys, pyarrow as pa, pyarrow.parquet as pq\nrows = json.load(open(sys.argv[1]))\npq.write_table(pa.table({{'bucket': ['{bucket}'] * len(rows), 'key': [r[0] for r in rows], 'size': pa.array([r[1] for r in rows], pa.int64()), 'last_modified_date': pa.array([r[2] for r in rows], pa.timestamp('ms')), 'e_tag': [r[3] for r in rows], 'is_latest': [True] * len(rows)}}), sys.argv[2], compression='snappy')\" '{}' '{}'",
        json.display(),
        parquet.display(),
        bucket = b.name
    ));
    assert_eq!(
        code, 0,
        "cannot write the Parquet report (pyarrow missing? run scripts/install-deps.sh): {err}"
    );
    let data_key = format!("inventory/{}/daily/data/part-0.parquet", b.name);
    b.put(&data_key, std::fs::read(&parquet).unwrap());
    let manifest_key = format!("inventory/{}/daily/parquet/manifest.json", b.name);
    b.put(
        &manifest_key,
        format!(
            r#"{{"sourceBucket": "{name}", "destinationBucket": "arn:aws:s3:::{name}",
                "version": "2016-11-30", "creationTimestamp": "{now}", "fileFormat": "Parquet",
                "fileSchema": "message s3.inventory {{ required binary bucket (UTF8); required binary key (UTF8); optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); optional binary e_tag (UTF8); optional boolean is_latest; }}",
                "files": [{{"key": "{data_key}", "size": 1, "MD5checksum": "0"}}]}}"#,
            name = b.name,
            now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ),
    );
    let out = import_inventory(&s3.endpoint, &b.name, &manifest_key)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("imported 305 keys"), "{said}");
    started_from_report("snap-inv-parquet");
}

/// Runs `cmd` to its end; returns whether it succeeded, its stdout and
/// stderr, and its peak RSS in KiB. The peak is the highest VmHWM seen
/// while it runs: that of the program itself (getrusage would also count
/// the moment between fork and exec, when the child is a copy of this
/// test process).
fn run_measured(mut cmd: std::process::Command) -> (bool, String, String, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start s3mount");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut peak = 0;
    let status = loop {
        // Read before the exit check: the last look is of the living process.
        peak = peak.max(peak_rss_kib(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.success(),
        out.join().unwrap(),
        err.join().unwrap(),
        peak,
    )
}

#[test]
fn a_million_entry_snapshot_is_written_and_loaded_in_bounded_memory() {
    use std::io::Write;
    let count = env_u64("S3MOUNT_TEST_SNAPSHOT_MILLION", 1_000_000);
    let s3 = TestS3::start();
    let b = s3.bucket("snap-million");
    // An inventory of keys that need not exist: only listings are loaded.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for i in 0..count {
        writeln!(
            gz,
            "\"{}\",\"data/d{:03}/k{i:07}\",\"{}\",\"2026-01-02T03:04:05.000Z\",\"{i:032x}\"",
            b.name,
            i % 1000,
            i % 4096
        )
        .unwrap();
    }
    let data_key = "inventory/data/million.csv.gz";
    b.put(data_key, gz.finish().unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    b.put(
        "inventory/manifest.json",
        format!(
            r#"{{"sourceBucket": "{0}", "destinationBucket": "arn:aws:s3:::{0}", "version": "2016-11-30",
                "creationTimestamp": "{now}", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag",
                "files": [{{"key": "{data_key}", "size": 1, "MD5checksum": "0"}}]}}"#,
            b.name
        ),
    );
    let import = import_inventory(&s3.endpoint, &b.name, "inventory/manifest.json");
    let (ok, _, err, peak_kib) = run_measured(import);
    assert!(ok, "{err}");
    let import_mib = peak_kib / 1024;

    let (proxy, endpoint) = s3.proxied();
    let cache = TempDir::new("snap-million");
    let m = fresh_mount(
        &endpoint,
        &b.name,
        &cache,
        &["--metadata-ttl=3600", "--memory-limit=64M"],
    );
    let load_mib = peak_rss_kib(m.pid()) / 1024;
    let lists = proxy.list_requests();
    let per_dir = (count / 1000).to_string();
    let (code, out, err) = sh(&format!("ls '{}/d500' | wc -l", m.path().display()));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), per_dir);
    assert_eq!(proxy.list_requests() - lists, 0, "ls listed S3");
    let log = m.log_text();
    let loaded = log
        .lines()
        .find(|l| l.contains("started from the catalog snapshot"))
        .unwrap_or_else(|| panic!("no snapshot loaded: {log}"));
    eprintln!("{count} entries: import-inventory peaked at {import_mib} MiB, the mount at {load_mib} MiB after loading; {loaded}");
    // The stated constant over --memory-limit: 64 MiB (the runtime, the
    // SDK, SQLite's page cache), whatever the snapshot's size.
    assert!(load_mib < 64 + 64, "loading peaked at {load_mib} MiB");
    assert!(
        import_mib < 96,
        "import-inventory peaked at {import_mib} MiB"
    );
}

#[test]
fn of_two_publishers_that_race_one_wins_and_the_other_is_told_to_run_again() {
    let s3 = TestS3::conditional();
    let b = s3.bucket("snap-race");
    for k in ["data/a/one", "data/b/two"] {
        b.put(k, "x");
    }
    let cache = TempDir::new("snap-race");
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    let a = Mounted::start(&s3, &format!("{}/data", b.name), &[&cache_arg]);
    let want = tree(&a.path());
    drop(a);
    // Every answer a second late: both publishers look at the snapshot's
    // key (absent) before either one's upload lands.
    let (proxy, endpoint) = s3.proxied();
    proxy.set(proxy::Faults {
        first_byte_delay: Duration::from_secs(1),
        ..proxy::Faults::default()
    });
    let outcomes: Vec<(bool, String)> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let out = catalog_command(
                        &endpoint,
                        "publish",
                        &[
                            cache_arg.clone(),
                            format!("{}/data", b.name),
                            format!("s3://{}/{SNAPSHOT_KEY}", b.name),
                        ],
                    )
                    .output()
                    .unwrap();
                    (
                        out.status.success(),
                        String::from_utf8_lossy(&out.stderr).into_owned(),
                    )
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won = outcomes.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(won, 1, "{outcomes:?}");
    let (_, lost) = outcomes.iter().find(|(ok, _)| !ok).unwrap();
    assert!(
        lost.contains("another publisher wrote") && lost.contains("run again"),
        "{lost}"
    );
    proxy.set(proxy::Faults::default());

    // What is there is one whole snapshot, which a new machine starts from.
    let fresh = TempDir::new("snap-race-new");
    let m = fresh_mount(&s3.endpoint, &b.name, &fresh, &["--metadata-ttl=3600"]);
    assert!(
        m.log_text().contains("started from the catalog snapshot"),
        "{}",
        m.log_text()
    );
    assert!(tree(&m.path()) == want);
}

#[test]
fn publishing_without_a_catalog_lists_from_s3_keeping_big_directories_on_disk() {
    let s3 = TestS3::start();
    let b = s3.bucket("snap-nocat");
    let keys = env_u64("S3MOUNT_TEST_NOCAT_KEYS", 12_000);
    b.put_many(
        (0..keys).map(|i| format!("data/big/k{i:05}")).collect(),
        |_| vec![b'y'; 3],
    );
    b.put("data/small/one", "1");
    let empty = TempDir::new("snap-nocat");
    let cmd = catalog_command(
        &s3.endpoint,
        "publish",
        &[
            format!("--cache-dir={}", empty.path().display()),
            format!("{}/data", b.name),
            format!("s3://{}/{SNAPSHOT_KEY}", b.name),
        ],
    );
    let (ok, said, err, peak_kib) = run_measured(cmd);
    assert!(ok, "{said}{err}");
    assert!(
        said.contains(&format!("{} entries", keys + 3))
            && said.contains(" 3 directories listed from S3"),
        "{said}"
    );
    // Listed into the scratch catalog, which keeps big listings on disk:
    // the same peak whatever the directory's size.
    let publish_mib = peak_kib / 1024;
    assert!(publish_mib < 64, "publish peaked at {publish_mib} MiB");
    let want = tree(&Mounted::start(&s3, &format!("{}/data", b.name), &[]).path());
    let cache = TempDir::new("snap-nocat-new");
    let m = fresh_mount(&s3.endpoint, &b.name, &cache, &["--metadata-ttl=3600"]);
    assert!(
        m.log_text().contains("started from the catalog snapshot"),
        "{}",
        m.log_text()
    );
    assert!(tree(&m.path()) == want);
}

//! Reads through an in-process mount: what the fetcher asks of S3 for a
//! read (bytes, requests, read-ahead, single flight), the memory budget,
//! broken and stalled bodies, and the disk cache across remounts.

use super::*;

const MIB: u64 = 1024 * 1024;

fn pattern(n: u64, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i % 249) as u8 ^ seed).collect()
}

/// A mount with the faults of `plan` over a store holding `data` as `key`.
fn faulty_holding(key: &str, data: &[u8], plan: FaultPlan) -> TestMount<FaultyStore<MemoryStore>> {
    let memory = Arc::new(MemoryStore::new(true));
    memory.insert(key, data.to_vec());
    TestMount::faulty(memory, plan, Settings::default())
}

fn fetched<S: ObjectStore>(m: &TestMount<S>) -> u64 {
    m.fs().read_stats().fetched_bytes.load(Ordering::Relaxed)
}

fn gets<S: ObjectStore>(m: &TestMount<S>) -> u64 {
    m.fs().read_stats().requests.load(Ordering::Relaxed)
}

#[test]
fn a_small_file_is_fetched_in_one_get() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", pattern(200_000, 1));
        m.read_file("f").await.unwrap();
        assert_eq!(gets(&m), 1);
        assert_eq!(fetched(&m), 200_000);
    })
}

#[test]
fn a_sequential_read_uses_large_ranged_gets() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", pattern(64 * MIB, 2));
        m.read_file("f").await.unwrap();
        // Read-ahead windows grow to 8 MiB parts: 64 MiB in a few dozen
        // GETs at most, not one per 128 KiB read (512).
        assert!(gets(&m) <= 32, "{} GETs", gets(&m));
    })
}

#[test]
fn random_small_reads_fetch_little_beyond_what_they_ask() {
    run(async {
        let m = TestMount::new();
        let data = pattern(64 * MIB, 3);
        m.store().insert("f", data.clone());
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20 {
            let at = rng.u64(..64 * MIB - 4096);
            let got = m.read_at(fh, ino, at, 4096).await.unwrap();
            assert_eq!(got, data[at as usize..at as usize + 4096]);
        }
        m.close(fh, ino).await.unwrap();
        assert!(
            fetched(&m) <= 20 * 2 * MIB,
            "fetched {} for 20 reads of 4 KiB",
            fetched(&m)
        );
    })
}

#[test]
fn readers_of_one_file_at_once_share_its_fetches() {
    run(async {
        let m = TestMount::new();
        let data = pattern(24 * MIB, 4);
        m.store().insert("f", data.clone());
        let mut handles = Vec::new();
        for _ in 0..3 {
            handles.push(m.open("f", libc::O_RDONLY).await.unwrap());
        }
        // In step, as threads of one program reading one file would.
        for at in (0..24 * MIB).step_by(MIB as usize) {
            let reads =
                join_all(handles.iter().map(|&(fh, ino)| m.read_at(fh, ino, at, MIB))).await;
            for got in reads {
                assert_eq!(got.unwrap(), data[at as usize..(at + MIB) as usize]);
            }
        }
        for (fh, ino) in handles {
            m.close(fh, ino).await.unwrap();
        }
        assert!(
            fetched(&m) <= 24 * MIB * 11 / 10,
            "fetched {} for three readers of 24 MiB",
            fetched(&m)
        );
    })
}

#[test]
fn memory_stays_within_its_budget_while_a_large_file_is_read() {
    run(async {
        let settings = Settings {
            read: ReadConfig {
                memory_limit: 24 * MIB,
                ..ReadConfig::default()
            },
            ..Settings::default()
        };
        let m = TestMount::with(settings);
        let data = pattern(96 * MIB, 5);
        m.store().insert("f", data.clone());
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        let mut at = 0;
        let mut peak = 0;
        while at < data.len() as u64 {
            let chunk = m.read_at(fh, ino, at, 4 * MIB).await.unwrap();
            assert_eq!(chunk, data[at as usize..at as usize + chunk.len()]);
            let used = m.fs().memory();
            peak = peak.max(used.cache + used.ahead);
            at += chunk.len() as u64;
        }
        m.close(fh, ino).await.unwrap();
        assert!(
            peak <= 24 * MIB,
            "held {peak} bytes with a budget of 24 MiB"
        );
    })
}

#[test]
fn a_second_open_of_an_unchanged_file_keeps_the_kernels_pages_and_a_changed_one_drops_them() {
    run(async {
        let m = TestMount::new();
        m.store().insert("f", "one");
        let attr = m.resolve("f").await.unwrap();
        let first = m.fs().open(attr.ino, libc::O_RDONLY).await.unwrap();
        m.close(first.fh, attr.ino).await.unwrap();
        let again = m.fs().open(attr.ino, libc::O_RDONLY).await.unwrap();
        assert!(matches!(again.cache, crate::read::PageCache::Keep));
        m.close(again.fh, attr.ino).await.unwrap();
        m.write_file("f", b"two").await.unwrap();
        let changed = m.fs().open(attr.ino, libc::O_RDONLY).await.unwrap();
        assert!(matches!(changed.cache, crate::read::PageCache::Invalidate));
        m.close(changed.fh, attr.ino).await.unwrap();
    })
}

#[test]
fn bodies_that_break_off_give_the_right_bytes_or_an_error_never_wrong_ones() {
    run(async {
        let data = pattern(6 * MIB, 7);
        let plan = FaultPlan {
            seed: 3,
            cut_body: 0.5,
            ..FaultPlan::default()
        };
        let m = faulty_holding("f", &data, plan);
        let mut tries = 0;
        loop {
            tries += 1;
            match m.read_file("f").await {
                Ok(got) => {
                    assert!(got == data, "wrong bytes after a broken body");
                    break;
                }
                Err(e) => assert_eq!(e.errno(), libc::EIO),
            }
            // What arrived before each break stays, so each try gets further.
            assert!(tries < 20, "no read got through in 20 tries");
        }
        assert!(m.store().counts().bodies_cut > 0, "no body was cut");
    })
}

#[test]
fn units_that_arrived_before_a_break_are_not_fetched_again() {
    run(async {
        let data = pattern(16 * MIB, 8);
        let plan = FaultPlan {
            seed: 11,
            cut_body: 1.0,
            ..FaultPlan::default()
        };
        let m = faulty_holding("f", &data, plan);
        let _ = m.read_file("f").await;
        let after_cut = fetched(&m);
        m.store().set_enabled(false);
        assert_eq!(m.read_file("f").await.unwrap(), data);
        assert!(
            fetched(&m) <= 16 * MIB + after_cut / 8,
            "{} fetched in all, {after_cut} before the breaks",
            fetched(&m)
        );
    })
}

#[test]
fn stalled_bodies_still_deliver_the_right_bytes() {
    run(async {
        let data = pattern(20 * MIB, 9);
        let plan = FaultPlan {
            seed: 5,
            stall: Some((0.5, Duration::from_millis(20))),
            ..FaultPlan::default()
        };
        let m = faulty_holding("f", &data, plan);
        assert_eq!(m.read_file("f").await.unwrap(), data);
        assert!(m.store().counts().stalls > 0);
    })
}

#[test]
fn a_refused_read_is_eio_and_a_later_one_succeeds() {
    run(async {
        let plan = FaultPlan {
            seed: 1,
            refuse: 1.0,
            ..FaultPlan::default()
        };
        let m = faulty_holding("f", b"contents", plan);
        m.store().set_enabled(false);
        m.resolve("f").await.unwrap();
        m.store().set_enabled(true);
        assert_eq!(errno_of(m.read_file("f").await), libc::EIO);
        m.store().set_enabled(false);
        assert_eq!(m.read_file("f").await.unwrap(), b"contents");
    })
}

#[test]
fn a_listing_s3_refuses_is_eio_and_a_later_one_succeeds() {
    run(async {
        let plan = FaultPlan {
            seed: 1,
            refuse: 1.0,
            ..FaultPlan::default()
        };
        let m = faulty_holding("d/f", b"x", plan);
        assert_eq!(errno_of(m.list("").await), libc::EIO);
        m.store().set_enabled(false);
        assert_eq!(m.list("").await.unwrap(), ["d"]);
    })
}

#[test]
fn with_a_data_cache_a_remount_reads_without_any_request() {
    run(async {
        let settings = Settings {
            data_cache: Some(256 * MIB),
            ..Settings::default()
        };
        let mut m = TestMount::with(settings);
        let data = pattern(20 * MIB, 10);
        m.store().insert("f", data.clone());
        assert_eq!(m.read_file("f").await.unwrap(), data);
        // The cache writes what was read in the background; a remount
        // before they land would rightly fetch the rest again.
        cache_writes_settled(&m).await;
        m.remount().await;
        let before = m.store().requests();
        assert_eq!(m.read_file("f").await.unwrap(), data);
        assert_eq!(m.store().requests(), before, "the remount asked S3");
    })
}

#[test]
fn with_a_data_cache_a_file_written_here_is_read_back_from_disk() {
    run(async {
        let settings = Settings {
            data_cache: Some(256 * MIB),
            ..Settings::default()
        };
        let mut m = TestMount::with(settings);
        let data = pattern(3 * MIB, 11);
        m.write_file("f", &data).await.unwrap();
        // The copy into the cache runs in the background.
        tokio::time::sleep(Duration::from_millis(200)).await;
        m.remount().await;
        let before = m.store().requests();
        assert_eq!(m.read_file("f").await.unwrap(), data);
        assert_eq!(m.store().requests(), before);
    })
}

/// Reads the first `len` bytes of `path` and closes it.
async fn read_head<S: ObjectStore>(m: &TestMount<S>, path: &str, len: u64) -> Vec<u8> {
    let (fh, ino) = m.open(path, libc::O_RDONLY).await.unwrap();
    let head = m.read_at(fh, ino, 0, len).await.unwrap();
    m.close(fh, ino).await.unwrap();
    head
}

/// Bytes the mount fetched to complete objects in the disk cache, once
/// they have not grown for half a second.
/// Waits until the data cache has written nothing new for half a second.
async fn cache_writes_settled<S: ObjectStore>(m: &TestMount<S>) {
    let stats = m.fs().data_cache_stats().expect("a data cache");
    let (mut last, mut still) = (u64::MAX, 0);
    while still < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.bytes_written.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

async fn completed_bytes<S: ObjectStore>(m: &TestMount<S>) -> u64 {
    let stats = m.fs().data_cache_stats().expect("a data cache");
    let (mut last, mut still) = (u64::MAX, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.completion_bytes.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        if still == 5 {
            return now;
        }
        last = now;
    }
}

#[test]
fn an_object_left_mostly_cached_is_completed_after_its_last_close() {
    run(async {
        let settings = Settings {
            data_cache: Some(256 * MIB),
            ..Settings::default()
        };
        let mut m = TestMount::with(settings);
        let data = pattern(64 * MIB, 14);
        m.store().insert("f", data.clone());
        // Two readers of the first 36 MiB: nothing is completed while the
        // second is still open.
        let (fh, ino) = m.open("f", libc::O_RDONLY).await.unwrap();
        assert!(m.read_at(fh, ino, 0, 36 * MIB).await.unwrap() == data[..36 * MIB as usize]);
        assert!(read_head(&m, "f", 36 * MIB).await == data[..36 * MIB as usize]);
        assert_eq!(completed_bytes(&m).await, 0, "completed while open");
        m.close(fh, ino).await.unwrap();
        let rest = completed_bytes(&m).await;
        let read = fetched(&m) - rest;
        assert!(
            rest > 0 && rest + read >= 64 * MIB,
            "completed {rest} bytes, {read} fetched for the readers"
        );
        m.remount().await;
        let before = m.store().requests();
        assert_eq!(m.read_file("f").await.unwrap(), data);
        assert_eq!(m.store().requests(), before, "the remount asked S3");
    })
}

#[test]
fn objects_closed_while_another_is_completed_are_completed_after_it() {
    run(async {
        let settings = Settings {
            data_cache: Some(512 * MIB),
            ..Settings::default()
        };
        let mut m = TestMount::with(settings);
        let files: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| (format!("f{i}"), pattern(64 * MIB, 20 + i as u8)))
            .collect();
        for (name, data) in &files {
            m.store().insert(name, data.clone());
        }
        for (name, data) in &files {
            assert!(read_head(&m, name, 36 * MIB).await == data[..36 * MIB as usize]);
        }
        let stats = m.fs().data_cache_stats().unwrap();
        for _ in 0..300 {
            if stats.completions.load(Ordering::Relaxed) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(stats.completions.load(Ordering::Relaxed), 3);
        completed_bytes(&m).await;
        m.remount().await;
        let before = m.store().requests();
        for (name, data) in &files {
            assert_eq!(&m.read_file(name).await.unwrap(), data);
        }
        assert_eq!(m.store().requests(), before, "the remount asked S3");
    })
}

#[test]
fn an_object_cached_only_in_small_part_is_not_completed() {
    for (head, complete) in [(2 * MIB, 256 * MIB), (36 * MIB, 0)] {
        run(async move {
            let mut settings = Settings {
                data_cache: Some(256 * MIB),
                ..Settings::default()
            };
            settings.read.data_cache_complete = complete;
            let m = TestMount::with(settings);
            let data = pattern(64 * MIB, 15);
            m.store().insert("f", data.clone());
            assert!(read_head(&m, "f", head).await == data[..head as usize]);
            assert_eq!(
                completed_bytes(&m).await,
                0,
                "{head} bytes read, limit {complete}"
            );
            assert!(fetched(&m) < 64 * MIB, "the readers fetched it all");
        })
    }
}

#[test]
fn a_cached_version_is_not_served_once_the_object_changed() {
    run(async {
        let settings = Settings {
            data_cache: Some(256 * MIB),
            ttl: Duration::from_millis(50),
            ..Settings::default()
        };
        let mut m = TestMount::with(settings);
        m.store().insert("f", pattern(MIB, 12));
        m.read_file("f").await.unwrap();
        let new = pattern(MIB, 13);
        m.store().insert("f", new.clone());
        m.remount().await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(m.read_file("f").await.unwrap(), new);
    })
}

#[test]
fn the_footer_of_a_columnar_file_is_read_without_fetching_the_rest() {
    run(async {
        let settings = Settings {
            read: ReadConfig {
                columnar_suffixes: vec![".parquet".into()],
                ..ReadConfig::default()
            },
            ..Settings::default()
        };
        let m = TestMount::with(settings);
        let data = pattern(64 * MIB, 14);
        m.store().insert("t.parquet", data.clone());
        let (fh, ino) = m.open("t.parquet", libc::O_RDONLY).await.unwrap();
        let tail = m.read_at(fh, ino, 64 * MIB - 8, 8).await.unwrap();
        assert_eq!(tail, data[data.len() - 8..]);
        m.close(fh, ino).await.unwrap();
        assert!(
            fetched(&m) <= MIB,
            "fetched {} for an 8-byte footer",
            fetched(&m)
        );
    })
}

#[test]
fn columnar_files_open_without_the_kernels_page_cache_and_others_with_it() {
    run(async {
        let settings = Settings {
            read: ReadConfig {
                columnar_suffixes: vec![".parquet".into()],
                ..ReadConfig::default()
            },
            ..Settings::default()
        };
        let m = TestMount::with(settings);
        m.store().insert("t.parquet", "x");
        m.store().insert("t.csv", "x");
        let parquet = m.resolve("t.parquet").await.unwrap();
        let csv = m.resolve("t.csv").await.unwrap();
        let opened = m.fs().open(parquet.ino, libc::O_RDONLY).await.unwrap();
        assert!(
            matches!(opened.cache, crate::read::PageCache::Bypass),
            "parquet"
        );
        let plain = m.fs().open(csv.ino, libc::O_RDONLY).await.unwrap();
        assert!(
            !matches!(plain.cache, crate::read::PageCache::Bypass),
            "csv"
        );
        for (fh, ino) in [(opened.fh, parquet.ino), (plain.fh, csv.ino)] {
            m.close(fh, ino).await.unwrap();
        }
    })
}

#[test]
fn a_listing_of_thousands_of_keys_takes_one_request_per_thousand() {
    run(async {
        let m = TestMount::new();
        for i in 0..2500 {
            m.store().insert(&format!("d/f{i:05}"), "");
        }
        assert_eq!(m.list("d").await.unwrap().len(), 2500);
        let pages = m.fs().catalog_stats().list_requests.load(Ordering::Relaxed);
        // The root (1) and d (3 pages of at most 1000).
        assert_eq!(pages, 4);
    })
}

#[test]
fn a_missing_name_in_a_fresh_listing_is_answered_without_a_request() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/a", "x");
        m.list("d").await.unwrap();
        let before = m.store().requests();
        for name in ["b", "c", "nope.txt"] {
            assert_eq!(
                errno_of(m.resolve(&format!("d/{name}")).await),
                libc::ENOENT
            );
        }
        assert_eq!(m.store().requests(), before);
    })
}

#[test]
fn attributes_show_the_size_owner_and_modes_of_the_mount() {
    run(async {
        let m = TestMount::new();
        m.store().insert("d/f", vec![0u8; 4321]);
        let file = m.resolve("d/f").await.unwrap();
        let dir = m.resolve("d").await.unwrap();
        assert_eq!(
            (file.size, file.perm, file.uid, file.gid),
            (4321, 0o644, 1000, 1000)
        );
        assert!(!file.is_dir);
        assert_eq!((dir.is_dir, dir.perm), (true, 0o755));
    })
}

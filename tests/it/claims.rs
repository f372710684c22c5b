//! Claims across mounts: many loaders on many mounts of one bucket, each
//! dropped file loaded exactly once; create-only files; `mv -n` against
//! another mount; files replaced by other clients. The tests that rest on
//! conditional writes run against the server that enforces them
//! (SeaweedFS, `TestS3::conditional`); the rest against the usual one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http_proxy::{Fault, Rule};
use crate::support::*;

/// A loader: claims each file it lists in `incoming/` by renaming it into
/// `processing/` (under a name of the loader's own when $TAG is set),
/// "loads" it (its name and checksum into a local log), then moves it to
/// `processed/`; stops once the producers are done and
/// `processed/` holds as many files as they dropped (the count in $DONE).
/// Every loader tries the files in the same order, so they collide often.
const LOADER: &str = r#"
set -u
cd "$MNT"
while :; do
  for n in $(ls incoming); do
    if mv "incoming/$n" "processing/$TAG$n" 2>/dev/null; then
      sum=$(sha256sum "processing/$TAG$n" | cut -d' ' -f1) || { echo "UNREADABLE $n" >> "$LOG"; continue; }
      echo "$n $sum" >> "$LOG"
      err=$(mv "processing/$TAG$n" "processed/$n" 2>&1) || echo "NOT-MOVED $n $err" >> "$LOG"
    fi
  done
  if [ -e "$DONE" ] && [ "$(ls processed | wc -l)" -ge "$(cat "$DONE")" ]; then break; fi
  sleep 0.2
done
"#;

/// The files the producers drop: empty ones, small ones, and two above the
/// 8 MiB part size (multipart uploads and copies).
fn dropped_files(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let len = match i % 10 {
                0 => 0,
                1 if i < 20 => 9 << 20,
                2..=4 => 100 << 10,
                _ => 1 + i * 37,
            };
            (format!("f{i:04}.dat"), random_bytes(len, i as u64 + 1))
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = TempDir::new("sum");
    let path = dir.path().join("x");
    std::fs::write(&path, data).unwrap();
    sha256_of(&path)
}

/// Kills the loaders if the test ends early.
struct Loaders(Vec<Child>);

impl Drop for Loaders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 3 loader mounts (each its own process and cache dir, as 3 machines) × 2
/// loaders, and a 4th mount whose producers drop `files`; checks that every
/// file was loaded exactly once and ends in `processed/` byte for byte.
/// Which names the loaders claim files under.
#[derive(Clone, Copy, PartialEq)]
enum ClaimNames {
    /// `processing/NAME` on every loader.
    Same,
    /// `processing/LOADER.NAME`: each loader its own.
    OwnPerLoader,
}

fn fleet_race(
    loader_endpoint: &Endpoint,
    s3: &TestS3,
    files: &[(String, Vec<u8>)],
    claim_names: ClaimNames,
) {
    let bucket = s3.bucket("fleet");
    let producer = Mounted::start(s3, &bucket.name, &[]);
    for dir in ["incoming", "processing", "processed"] {
        std::fs::create_dir(producer.path().join(dir)).unwrap();
    }
    let mounts: Vec<Mounted> = (0..3)
        .map(|_| Mounted::start_at(loader_endpoint, &bucket.name, &["--metadata-ttl", "1"]))
        .collect();
    let work = TempDir::new("fleet");
    let done = work.path().join("done");
    let mut loaders = Loaders(Vec::new());
    let mut logs = Vec::new();
    for (m, mount) in mounts.iter().enumerate() {
        for l in 0..2 {
            let log = work.path().join(format!("loader-{m}-{l}.log"));
            std::fs::write(&log, "").unwrap();
            let child = Command::new("bash")
                .arg("-c")
                .arg(LOADER)
                .env("MNT", mount.path())
                .env("LOG", &log)
                .env("DONE", &done)
                .env(
                    "TAG",
                    match claim_names {
                        ClaimNames::Same => String::new(),
                        ClaimNames::OwnPerLoader => format!("m{m}l{l}."),
                    },
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a loader");
            loaders.0.push(child);
            logs.push(log);
        }
    }
    // Two producers, each `cp`ing its half of the files from local disk.
    let local = TempDir::new("produced");
    for (name, data) in files {
        std::fs::write(local.path().join(name), data).unwrap();
    }
    let started = Instant::now();
    std::thread::scope(|s| {
        for half in 0..2 {
            let (local, incoming) = (local.path(), producer.path().join("incoming"));
            s.spawn(move || {
                for (name, _) in files.iter().skip(half).step_by(2) {
                    let status = Command::new("cp")
                        .arg(local.join(name))
                        .arg(incoming.join(name))
                        .status()
                        .unwrap();
                    assert!(status.success(), "cp {name} into incoming/ failed");
                }
            });
        }
    });
    std::fs::write(&done, files.len().to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    for child in &mut loaders.0 {
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the loaders did not finish within 600 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "fleet race: {} files claimed by 6 loaders on 3 mounts in {:.1}s",
        files.len(),
        started.elapsed().as_secs_f64()
    );

    // Every file loaded exactly once, with the right bytes.
    let want: BTreeMap<&str, String> = files
        .iter()
        .map(|(n, d)| (n.as_str(), sha256_hex(d)))
        .collect();
    let mut loaded: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for log in &logs {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let (name, sum) = line.split_once(' ').unwrap();
            if ["UNREADABLE", "NOT-MOVED"].contains(&name) {
                let file = sum.split(' ').next().unwrap_or_default();
                let told: Vec<String> = mounts
                    .iter()
                    .flat_map(|m| m.log_text().lines().map(str::to_owned).collect::<Vec<_>>())
                    .filter(|l| l.contains(file))
                    .collect();
                panic!(
                    "a loader failed: {line}\nwhat the mounts logged of {file}:\n{}",
                    told.join("\n")
                );
            }
            loaded
                .entry(name.to_owned())
                .or_default()
                .push(sum.to_owned());
        }
    }
    let twice: Vec<_> = loaded.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(twice.is_empty(), "files loaded more than once: {twice:?}");
    let names: BTreeSet<&str> = loaded.keys().map(String::as_str).collect();
    let all: BTreeSet<&str> = want.keys().copied().collect();
    assert_eq!(names, all, "the loaders' logs do not hold every file once");
    for (name, sums) in &loaded {
        assert_eq!(
            &sums[0],
            &want[name.as_str()],
            "{name} was loaded with wrong bytes"
        );
    }
    // And in S3: nothing left behind, every file processed, byte for byte.
    assert_eq!(
        bucket.names_under("incoming"),
        BTreeSet::new(),
        "left in incoming/"
    );
    assert_eq!(
        bucket.names_under("processing"),
        BTreeSet::new(),
        "left in processing/"
    );
    let processed = bucket.names_under("processed");
    assert_eq!(
        processed,
        all.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>()
    );
    for (name, data) in files {
        assert!(
            bucket.get(&format!("processed/{name}")) == *data,
            "processed/{name} differs from what was dropped"
        );
    }
}

#[test]
fn three_mounts_of_loaders_load_each_dropped_file_exactly_once() {
    let s3 = TestS3::conditional();
    fleet_race(&s3.endpoint, &s3, &dropped_files(2000), ClaimNames::Same);
}

#[test]
fn lost_answers_to_conditional_requests_neither_lose_nor_duplicate_a_claim() {
    let s3 = TestS3::conditional();
    let (proxy, endpoint) = s3.http_proxied();
    // Every 10th conditional request: S3 acts, the answer never arrives.
    proxy.set_rules(vec![Rule::conditional_every(Fault::LoseAnswer, 10)]);
    let files = env_u64("S3MOUNT_TEST_LOST_ANSWER_FILES", 2000) as usize;
    fleet_race(&endpoint, &s3, &dropped_files(files), ClaimNames::Same);
    assert!(
        proxy.injected_total() >= 10,
        "only {} answers were lost",
        proxy.injected_total()
    );
}

/// Loaders that claim into names of their own (`processing/LOADER.NAME`):
/// the case where copy-then-delete alone let two claims of one file both
/// win when the first one's delete was in doubt; the claim lock decides.
#[test]
fn loaders_claiming_under_names_of_their_own_load_each_file_exactly_once() {
    let s3 = TestS3::conditional();
    let (proxy, endpoint) = s3.http_proxied();
    proxy.set_rules(vec![Rule::conditional_every(Fault::LoseAnswer, 10)]);
    fleet_race(
        &endpoint,
        &s3,
        &dropped_files(env_u64("S3MOUNT_TEST_OWN_NAMES_FILES", 300) as usize),
        ClaimNames::OwnPerLoader,
    );
    assert!(
        proxy.injected_total() >= 10,
        "only {} answers were lost",
        proxy.injected_total()
    );
}

/// Creates `name` with O_EXCL under `dir`, writes `data` and stores it with
/// fsync; the errno fsync failed with (0: stored).
fn create_exclusive(dir: &Path, name: &str, data: &[u8]) -> i32 {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(name))
        .unwrap_or_else(|e| panic!("O_EXCL create of {name}: {e}"));
    f.write_all(data).unwrap();
    errno_of(f.sync_all())
}

#[test]
fn o_excl_creates_on_two_mounts_have_one_winner() {
    let s3 = TestS3::conditional();
    let bucket = s3.bucket("excl");
    let a = Mounted::start(&s3, &bucket.name, &[]);
    let b = Mounted::start(&s3, &bucket.name, &[]);
    for round in 0..5 {
        let name = format!("lock-{round}");
        let (from_a, from_b) = (format!("a{round}"), format!("b{round}"));
        // Both create the name before either stores it; both then store at once.
        let barrier = std::sync::Barrier::new(2);
        let (ra, rb) = std::thread::scope(|s| {
            let ta = s.spawn(|| {
                barrier.wait();
                create_exclusive(&a.path(), &name, from_a.as_bytes())
            });
            let tb = s.spawn(|| {
                barrier.wait();
                create_exclusive(&b.path(), &name, from_b.as_bytes())
            });
            (ta.join().unwrap(), tb.join().unwrap())
        });
        let mut outcomes = [ra, rb];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [0, libc::EEXIST],
            "round {round}: a stored with {ra}, b with {rb}"
        );
        let winner = if ra == 0 { &from_a } else { &from_b };
        assert_eq!(bucket.get(&name), winner.as_bytes(), "round {round}");
    }
    // A late O_EXCL create of a taken name fails with EEXIST: at open when
    // the mount already knows the name, else when it stores; nothing of it
    // reaches S3.
    let before = bucket.get("lock-0");
    let late = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(b.path().join("lock-0"));
    match late {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}"),
        Ok(mut f) => {
            f.write_all(b"late").unwrap();
            assert_eq!(errno_of(f.sync_all()), libc::EEXIST);
        }
    }
    assert_eq!(bucket.get("lock-0"), before);
}

#[test]
fn mv_n_onto_a_name_another_mount_created_meanwhile_replaces_nothing() {
    let s3 = TestS3::conditional();
    let bucket = s3.bucket("mvn");
    bucket.put("incoming/x", "the dropped file");
    bucket.put("incoming/y", "another dropped file");
    let a = Mounted::start(&s3, &bucket.name, &[]);
    let b = Mounted::start(&s3, &bucket.name, &["--metadata-ttl", "300"]);
    // B lists done/ while it is empty, so it believes the names are free.
    std::fs::create_dir(a.path().join("done")).unwrap();
    assert!(names(&b.path().join("done")).is_empty());
    std::fs::write(a.path().join("done/x"), "created by mount A").unwrap();
    std::fs::write(a.path().join("done/y"), "also created by mount A").unwrap();
    assert_eq!(
        rename_noreplace(&b.path().join("incoming/x"), &b.path().join("done/x")),
        libc::EEXIST
    );
    // The ordinary tool: `mv -n` leaves both files as they were.
    let (_, _, _) = sh(&format!(
        "mv -n '{}' '{}'",
        b.path().join("incoming/y").display(),
        b.path().join("done/y").display()
    ));
    assert_eq!(bucket.get("done/x"), b"created by mount A");
    assert_eq!(bucket.get("done/y"), b"also created by mount A");
    assert_eq!(bucket.get("incoming/x"), b"the dropped file");
    assert_eq!(bucket.get("incoming/y"), b"another dropped file");
    let keys = bucket.keys();
    assert_eq!(keys.len(), 5, "something was left behind: {keys:?}");
}

#[test]
fn a_file_replaced_by_another_client_reads_as_its_new_version() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("replaced");
    let m = Mounted::start(&s3, &bucket.name, &[]);
    let local = TempDir::new("replaced");
    // Written through the mount, then replaced directly in S3 by a larger
    // and by a smaller version: a new open reads the new version whole,
    // though the default --metadata-ttl has not run out.
    for (name, seed, len) in [("grows.bin", 2, 700 << 10), ("shrinks.bin", 3, 50 << 10)] {
        std::fs::write(m.path().join(name), random_bytes(300 << 10, 1)).unwrap();
        let new = random_bytes(len, seed);
        bucket.put(name, new.clone());
        std::fs::write(local.path().join(name), &new).unwrap();
        let (code, _, err) = sh(&format!(
            "cmp '{}' '{}'",
            local.path().join(name).display(),
            m.path().join(name).display()
        ));
        assert_eq!(code, 0, "cmp of {name} after it was replaced: {err}");
        assert_eq!(sha256_of(&m.path().join(name)), sha256_hex(&new));
        assert_eq!(
            std::fs::metadata(m.path().join(name)).unwrap().len(),
            len as u64
        );
    }
}

#[test]
fn a_handle_that_read_part_of_a_replaced_file_never_mixes_versions() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("mix");
    let old = random_bytes(24 << 20, 4);
    bucket.put("big.bin", old.clone());
    let m = Mounted::start(&s3, &bucket.name, &["--read-part-size", "1M"]);
    let mut f = std::fs::File::open(m.path().join("big.bin")).unwrap();
    let mut first = vec![0; 1 << 20];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, old[..1 << 20]);
    bucket.put("big.bin", random_bytes(24 << 20, 5));
    // Far ahead of what read-ahead fetched: the rest of the old version or
    // an error, never bytes of the new one.
    f.seek(SeekFrom::Start(20 << 20)).unwrap();
    let mut later = vec![0; 1 << 20];
    match f.read_exact(&mut later) {
        Ok(()) => assert!(
            later == old[20 << 20..21 << 20],
            "bytes of two versions mixed"
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
}

#[test]
fn fstat_of_an_open_file_unlinked_through_the_mount_answers() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("fstat");
    bucket.put("gone.txt", "still open");
    let m = Mounted::start(&s3, &bucket.name, &[]);
    let f = std::fs::File::open(m.path().join("gone.txt")).unwrap();
    std::fs::remove_file(m.path().join("gone.txt")).unwrap();
    let meta = f.metadata().expect("fstat of an open, unlinked file");
    assert_eq!(meta.len(), 10);
    // The object goes once nothing reads it any more (docs/SEMANTICS.md).
    drop(f);
    eventually(
        "gone.txt to leave the bucket",
        Duration::from_secs(10),
        || !bucket.keys().contains(&"gone.txt".to_owned()),
    );
}

#[test]
fn an_endpoint_that_enforces_conditions_is_reported_as_such() {
    let s3 = TestS3::conditional();
    let bucket = s3.bucket("enforced");
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start(
        &s3,
        &bucket.name,
        &[
            "--metadata-ttl",
            "1",
            "--metrics-addr",
            &addr,
            "--require-conditional-writes",
        ],
    );
    assert!(
        m.log_text().contains("enforces conditional writes"),
        "{}",
        m.log()
    );
    let metrics = scrape(&addr);
    assert_eq!(
        value(&metrics, r#"s3mount_conditional_writes{enforced="true"}"#),
        Some(1.0)
    );
    // The probe left nothing behind.
    assert!(bucket.keys().is_empty(), "{:?}", bucket.keys());
}

#[test]
fn an_endpoint_that_ignores_conditions_is_reported_and_can_be_refused() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("ignored");
    bucket.put("incoming/a.csv", "a");
    // --require-conditional-writes: one line naming the limitation, nothing mounted.
    let dir = TempDir::new("refuse");
    let out = run_with_timeout(
        {
            let mut cmd = s3mount_command(&s3.endpoint);
            cmd.arg(&bucket.name)
                .arg(dir.path())
                .arg("--foreground")
                .arg("--require-conditional-writes")
                .args(endpoint_args(&s3.endpoint));
            cmd
        },
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("conditional writes"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("ignores S3 conditional writes"), "{err}");
    assert!(!is_mounted(dir.path()));
    // Without it: mounted, said so in the log, the metric and doctor, and
    // renames work as before.
    let addr = format!("127.0.0.1:{}", free_port());
    let m = Mounted::start(&s3, &bucket.name, &["--metrics-addr", &addr]);
    assert!(
        m.log_text().contains("ignores conditional writes"),
        "{}",
        m.log()
    );
    assert_eq!(
        value(
            &scrape(&addr),
            r#"s3mount_conditional_writes{enforced="false"}"#
        ),
        Some(1.0)
    );
    std::fs::create_dir(m.path().join("processed")).unwrap();
    std::fs::rename(
        m.path().join("incoming/a.csv"),
        m.path().join("processed/a.csv"),
    )
    .unwrap();
    assert_eq!(bucket.get("processed/a.csv"), b"a");
    let mut doctor = s3mount_command(&s3.endpoint);
    doctor
        .arg("doctor")
        .arg(&bucket.name)
        .args(endpoint_args(&s3.endpoint));
    let out = run_with_timeout(doctor, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT enforced"), "{text}");
    assert!(
        !bucket.keys().iter().any(|k| k.contains(".s3mount-probe-")),
        "a probe object was left behind: {:?}",
        bucket.keys()
    );
}

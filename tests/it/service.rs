//! Running as a service: mount(8) and fstab through the helper, the systemd
//! notify protocol, auto-unmount after a crash, metrics and `--count-dir`,
//! JSON logs, shutdown with an upload in flight, and `s3mount doctor`.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const HELPER: &str = "/sbin/mount.fuse.s3mount";

/// Points /sbin/mount.fuse.s3mount at the binary under test for as long as
/// it lives, and puts back whatever link was there (an installed package's).
struct HelperLink {
    previous: Option<PathBuf>,
}

impl HelperLink {
    fn install() -> HelperLink {
        let path = Path::new(HELPER);
        let previous = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => Some(std::fs::read_link(path).unwrap()),
            Ok(_) => panic!(
                "{HELPER} exists and is not a link; remove it (or the package that installed it) to run this test"
            ),
            Err(_) => None,
        };
        let _ = std::fs::remove_file(path);
        std::os::unix::fs::symlink(BIN, path)
            .unwrap_or_else(|e| panic!("cannot link {HELPER} to the binary under test: {e}"));
        HelperLink { previous }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(target) = &self.previous {
            let _ = std::os::unix::fs::symlink(target, HELPER);
        }
    }
}

/// A fresh mountpoint `m` in a temporary directory, unmounted on drop, for
/// mounts made by hand rather than by [`Mounted`].
fn mountpoint(tag: &str) -> (TempDir, PathBuf, UnmountOnDrop) {
    let dir = TempDir::new(tag);
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let guard = UnmountOnDrop(mnt.clone());
    (dir, mnt, guard)
}

/// A command for mount(8) without any AWS configuration in its environment.
fn bare_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

fn fstype(mountpoint: &Path) -> String {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE"])
        .arg(mountpoint)
        .output()
        .expect("findmnt");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn mount_t_fuse_s3mount_and_fstab_lines_work() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("helper");
    bucket.put("data/hello.txt", "hello from S3\n");
    let _link = HelperLink::install();
    let (dir, mnt, _unmount) = mountpoint("helper");
    let creds = dir.path().join("creds.env");
    std::fs::write(
        &creds,
        format!(
            "# test credentials\nAWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY=\"{}\"\n",
            s3.endpoint.access_key, s3.endpoint.secret_key
        ),
    )
    .unwrap();
    let options = format!(
        "endpoint_url={},region={},force_path_style,env_file={},cache_dir={},_netdev,nofail,allow_other,x-systemd.requires=network-online.target,metadata_ttl=30",
        s3.endpoint.url,
        s3.endpoint.region,
        creds.display(),
        dir.path().join("cache").display()
    );

    // mount -t: mount(8) finds the helper, which returns once the mount is live.
    let out = bare_command("mount")
        .args(["-t", "fuse.s3mount"])
        .arg(format!("{}/data", bucket.name))
        .arg(&mnt)
        .args(["-o", &options])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t fuse.s3mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fstype(&mnt), "fuse.s3mount");
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from S3\n"
    );
    std::fs::write(mnt.join("new.txt"), "via mount(8)").unwrap();
    assert_eq!(bucket.get("data/new.txt"), b"via mount(8)");
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    eventually(
        "the daemon to exit after umount",
        Duration::from_secs(10),
        || processes_mentioning(&mnt.to_string_lossy()).is_empty(),
    );

    // An fstab line (read-only this time), mounted by its mountpoint alone.
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\n{}/data {} fuse.s3mount {},ro,noauto 0 0\n",
            bucket.name,
            mnt.display(),
            options
        ),
    )
    .unwrap();
    let out = bare_command("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount from the fstab line failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("new.txt")).unwrap(),
        "via mount(8)"
    );
    let err = std::fs::write(mnt.join("refused.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success());
    assert!(!is_mounted(&mnt));

    // A bad helper call is one line and a failure, with nothing mounted.
    let out = bare_command(HELPER).arg("only-one-arg").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SOURCE DIR"), "{stderr}");
}

/// Kills (SIGKILL) and reaps a child on drop, for daemons started by hand.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn systemd_notify_ready_only_once_mounted_and_stopping_on_sigterm() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("notify");
    bucket.put("a.txt", "a");
    let (dir, mnt, _unmount) = mountpoint("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = s3mount_command(&s3.endpoint);
    cmd.arg(&bucket.name)
        .arg(&mnt)
        .arg("--foreground")
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(endpoint_args(&s3.endpoint))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = KillOnDrop(cmd.spawn().expect("start s3mount"));

    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("no notification within 30 s");
    // READY=1 promises the mount answers: list it the moment it arrives
    // (too early, this would list the empty directory underneath).
    assert_eq!(names(&mnt), vec!["a.txt"]);
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=Mounted")),
        "{ready}"
    );
    assert!(
        ready
            .lines()
            .any(|l| l == format!("MAINPID={}", daemon.0.id())),
        "{ready}"
    );

    // SIGTERM: STOPPING=1, then a clean exit with nothing left mounted.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("no STOPPING notification");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let status = eventually_ok(
        "the daemon to exit after SIGTERM",
        Duration::from_secs(15),
        || daemon.0.try_wait().unwrap().ok_or("still running"),
    );
    assert_eq!(status.code(), Some(0));
    assert!(!is_mounted(&mnt));
}

#[test]
fn auto_unmount_clears_the_mount_of_a_killed_daemon() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("autounmount");
    bucket.put("a.txt", "a");
    let mut mounted = Mounted::start(&s3, &bucket.name, &["--auto-unmount"]);
    assert_eq!(fstype(&mounted.path()), "fuse.s3mount");
    let path = mounted.path();
    let pid = mounted.pid();
    // SAFETY: killing our own child process, as a crash would.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(mounted.wait_exit(Duration::from_secs(10)), None);
    eventually(
        "the watchdog to unmount the dead mount",
        Duration::from_secs(10),
        || !is_mounted(&path),
    );
    // The directory is usable again, not "Transport endpoint is not connected".
    std::fs::read_dir(&path).expect("mountpoint readable after auto-unmount");
    eventually("the watchdog to exit", Duration::from_secs(10), || {
        processes_mentioning(&path.to_string_lossy()).is_empty()
    });
}

#[test]
fn metrics_move_during_a_read_and_count_dir_follows_the_drop_folder() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("metrics");
    let data = random_bytes(24 << 20, 7);
    bucket.put("big.bin", data.clone());
    bucket.put("incoming/first.csv", "1\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let mounted = Mounted::start(
        &s3,
        &bucket.name,
        &[
            "--metrics-addr",
            &addr,
            "--count-dir",
            "incoming",
            "--metadata-ttl",
            "1",
        ],
    );
    let gets = r#"s3mount_s3_requests_total{operation="GetObject",status="206"}"#;
    let before = scrape(&addr);
    assert!(before.contains("# TYPE s3mount_s3_requests_total counter"));
    let got_before = value(&before, gets).unwrap_or(0.0);
    let received_before = value(&before, "s3mount_s3_bytes_received_total").unwrap();

    assert_eq!(std::fs::read(mounted.path().join("big.bin")).unwrap(), data);
    let after = scrape(&addr);
    assert!(
        value(&after, gets).unwrap() > got_before,
        "GET count did not move:\n{after}"
    );
    assert!(
        value(&after, "s3mount_s3_bytes_received_total").unwrap()
            >= received_before + data.len() as f64
    );
    assert!(value(&after, "s3mount_read_bytes_total").unwrap() >= data.len() as f64);
    assert!(after.contains(
        r#"s3mount_s3_request_duration_seconds_bucket{operation="GetObject",le="+Inf"}"#
    ));
    assert!(value(&after, "s3mount_memory_budget_bytes").unwrap() > 0.0);
    assert!(value(&after, "s3mount_catalog_listings").unwrap() >= 1.0);

    let count = r#"s3mount_dir_objects{path="incoming"}"#;
    let gauge = |want: f64| {
        eventually(
            format_args!("the incoming/ gauge to read {want}"),
            Duration::from_secs(20),
            || value(&scrape(&addr), count) == Some(want),
        )
    };
    gauge(1.0);
    // Files arriving through the mount and directly in S3 are counted...
    for i in 0..3 {
        std::fs::write(mounted.path().join(format!("incoming/p{i}.csv")), "x\n").unwrap();
    }
    gauge(4.0);
    bucket.put("incoming/direct.csv", "d\n");
    gauge(5.0);
    // ...and files leaving are not.
    std::fs::create_dir(mounted.path().join("processed")).unwrap();
    for name in ["first.csv", "p0.csv", "p1.csv", "p2.csv", "direct.csv"] {
        std::fs::rename(
            mounted.path().join("incoming").join(name),
            mounted.path().join("processed").join(name),
        )
        .unwrap();
    }
    gauge(0.0);
}

#[test]
fn json_log_lines_parse() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("jsonlog");
    bucket.put("a.txt", "a");
    let dir = TempDir::new("jsonlog");
    let log = dir.path().join("s3mount.log");
    let mut mounted = Mounted::start(
        &s3,
        &bucket.name,
        &[
            "--log-format",
            "json",
            "--log-file",
            log.to_str().unwrap(),
            "--log-level",
            "info",
        ],
    );
    assert_eq!(names(&mounted.path()), vec!["a.txt"]);
    Command::new("umount").arg(mounted.path()).status().unwrap();
    assert_eq!(mounted.wait_exit(Duration::from_secs(10)), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "mounted" && v["level"] == "INFO"),
        "{text}"
    );
}

#[test]
fn sigterm_with_an_upload_in_flight_leaves_nothing_half_written() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("sigterm");
    bucket.put("keep.txt", "keep");
    let mut mounted = Mounted::start(&s3, &bucket.name, &["--write-part-size", "5M"]);
    // A producer still writing (and a file already closed, which must land).
    std::fs::write(mounted.path().join("closed.bin"), random_bytes(1 << 20, 2)).unwrap();
    let mut open = std::fs::File::create(mounted.path().join("open.bin")).unwrap();
    open.write_all(&random_bytes(16 << 20, 3)).unwrap();
    eventually(
        "the multipart upload to start",
        Duration::from_secs(20),
        || !bucket.open_multipart_uploads().is_empty(),
    );
    let started = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(mounted.pid() as i32, libc::SIGTERM) };
    assert_eq!(mounted.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(!is_mounted(&mounted.path()));
    drop(open);
    let keys = bucket.keys();
    assert!(keys.contains(&"closed.bin".to_owned()), "{keys:?}");
    assert!(!keys.contains(&"open.bin".to_owned()), "{keys:?}");
    assert!(
        bucket.open_multipart_uploads().is_empty(),
        "an aborted upload is still open"
    );
}

/// `s3mount doctor TARGET EXTRA...` against `endpoint`, within `limit`.
fn doctor(endpoint: &Endpoint, target: &str, extra: &[&str], limit: Duration) -> Output {
    let mut cmd = s3mount_command(endpoint);
    cmd.arg("doctor")
        .arg(target)
        .args(endpoint_args(endpoint))
        .args(extra);
    run_with_timeout(cmd, limit)
}

/// The report of `s3mount doctor --json`, which must succeed.
fn doctor_report(
    endpoint: &Endpoint,
    target: &str,
    extra: &[&str],
    limit: Duration,
) -> serde_json::Value {
    let out = doctor(endpoint, target, &[&["--json"], extra].concat(), limit);
    assert!(
        out.status.success(),
        "doctor on {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn doctor_answers_quickly_on_every_kind_of_prefix() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("doctor-kinds");
    bucket.put("tiny/one.txt", "twenty bytes of text");
    bucket.put("markers/a/", Vec::new());
    bucket.put("markers/b/", Vec::new());
    bucket.put_many(
        (0..env_u64("S3MOUNT_TEST_DOCTOR_OBJECTS", 10_000))
            .map(|i| format!("many/{i:05}.bin"))
            .collect(),
        |i| random_bytes(4096, i as u64),
    );
    for (prefix, objects, read) in [
        ("empty", 0, None),
        ("tiny", 1, Some(true)),
        ("markers", 0, None),
        (
            "many",
            env_u64("S3MOUNT_TEST_DOCTOR_OBJECTS", 10_000),
            Some(true),
        ),
    ] {
        // It used to spin on prefixes of small objects: a bound, not a
        // performance figure.
        let report = doctor_report(
            &s3.endpoint,
            &format!("{}/{prefix}", bucket.name),
            &[],
            Duration::from_secs(90),
        );
        assert_eq!(report["objects"]["count"], objects, "{prefix}");
        assert_eq!(report["permissions"]["read"].as_bool(), read, "{prefix}");
    }
}

#[test]
fn doctor_on_a_huge_object_and_on_a_key_it_may_not_read() {
    use crate::support::http_proxy::{Fault, Kind, Rule};
    let s3 = TestS3::start();
    let bucket = s3.bucket("doctor-edge");
    bucket.put("huge/one.bin", random_bytes(1 << 30, 9));
    bucket.put("secret/key.txt", "not for you");
    let report_on = |endpoint: &Endpoint, prefix: &str| {
        let target = format!("{}/{prefix}", bucket.name);
        doctor_report(endpoint, &target, &[], Duration::from_secs(120))
    };
    let report = report_on(&s3.endpoint, "huge");
    assert_eq!(report["objects"]["count"], 1);
    assert_eq!(report["permissions"]["read"].as_bool(), Some(true));

    // Listing allowed, reading denied (as with a policy that grants
    // s3:ListBucket but not s3:GetObject on the key).
    let (proxy, endpoint) = s3.http_proxied();
    proxy.set_rules(vec![Rule::new(
        Fault::Denied,
        1.0,
        &[Kind::Head, Kind::Get],
    )]);
    let started = std::time::Instant::now();
    let report = report_on(&endpoint, "secret");
    assert_eq!(
        report["permissions"]["read"].as_bool(),
        Some(false),
        "{report}"
    );
    assert!(
        report.to_string().contains("s3:GetObject"),
        "the advice names the permission: {report}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a denied read was retried: {:?}",
        started.elapsed()
    );
}

#[test]
fn doctor_measures_and_advises() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("doctor");
    bucket.put("logs/big.bin", random_bytes(12 << 20, 5));
    for i in 0..20 {
        bucket.put(&format!("logs/small/{i}.json"), format!("{{\"n\":{i}}}"));
    }
    let target = format!("{}/logs", bucket.name);
    let transfer = ["--transfer", "32M"];
    let report = doctor_report(&s3.endpoint, &target, &transfer, Duration::from_secs(120));
    assert_eq!(report["objects"]["count"], 21);
    assert_eq!(report["permissions"]["read"], true);
    assert_eq!(report["probe_object"], "logs/big.bin");
    assert!(report["first_byte_ms"].as_f64().unwrap() > 0.0);
    assert!(report["head_ms"].as_f64().unwrap() > 0.0);
    let rates: Vec<(u64, f64)> = report["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["connections"].as_u64().unwrap(),
                t["mib_per_s"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rates.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 8, 32]
    );
    assert!(rates.iter().all(|r| r.1 > 0.0), "{rates:?}");
    let advice = report["advice"].as_array().unwrap();
    // 20 of 21 objects are tiny: the small-object advice must be there.
    assert!(
        advice
            .iter()
            .any(|a| a.as_str().unwrap().contains("latency-bound")),
        "{advice:?}"
    );

    let table = doctor(&s3.endpoint, &target, &transfer, Duration::from_secs(120));
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    for row in [
        "GET first byte",
        "GET throughput, 32 connections",
        "LIST page latency",
        "advice:",
    ] {
        assert!(text.contains(row), "missing {row}:\n{text}");
    }

    // A bucket that does not exist: the mount's one-line error, exit 1.
    let out = doctor(
        &s3.endpoint,
        "no-such-bucket-s3mount-doctor",
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn auto_unmount_watchdog_leaves_a_later_mount_at_the_same_path_alone() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("rewatch");
    bucket.put("a.txt", "a");
    let (dir, mnt, _unmount) = mountpoint("rewatch");
    let start = |log: &str| {
        let mut cmd = s3mount_command(&s3.endpoint);
        cmd.arg(&bucket.name)
            .arg(&mnt)
            .arg("--auto-unmount")
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(endpoint_args(&s3.endpoint))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap());
        // Background mode: returns once mounted.
        let out = cmd.output().expect("run s3mount");
        assert!(out.status.success(), "mount failed, see {log}");
    };
    start("first.log");
    assert!(is_mounted(&mnt));
    // An orderly unmount, then at once a new mount at the same path: the
    // first daemon's watchdog must leave it alone.
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success());
    start("second.log");
    std::thread::sleep(Duration::from_secs(3));
    assert!(is_mounted(&mnt), "the new mount was taken down");
    assert_eq!(names(&mnt), vec!["a.txt"]);
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(out.status.success());
    eventually(
        "both daemons and watchdogs to exit",
        Duration::from_secs(10),
        || processes_mentioning(&mnt.to_string_lossy()).is_empty(),
    );
}

#[test]
fn the_cache_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let s3 = TestS3::start();
    let bucket = s3.bucket("private");
    bucket.put("a.txt", "a");
    let dir = TempDir::new("private-cache");
    let cache = dir.path().join("nested/cache");
    let arg = format!("--cache-dir={}", cache.display());
    let m = Mounted::start(&s3, &bucket.name, &[&arg]);
    assert_eq!(std::fs::read(m.path().join("a.txt")).unwrap(), b"a");
    std::fs::write(m.path().join("b.txt"), "b").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache directory");
    assert_eq!(mode(&cache.join("spool")), 0o700, "the spool directory");
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert!(!files.is_empty(), "the catalog is there");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn secrets_never_reach_the_log_even_at_trace_level() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("secrets");
    bucket.put("a.txt", "a");
    let m = Mounted::start_with_env(
        &s3.endpoint,
        &bucket.name,
        &["-vv"],
        &[("RUST_LOG", "trace")],
    );
    assert_eq!(std::fs::read(m.path().join("a.txt")).unwrap(), b"a");
    std::fs::write(m.path().join("b.txt"), "b").unwrap();
    let log = m.log_text();
    assert!(
        !log.contains(&s3.endpoint.secret_key),
        "the secret key is in the log"
    );
    // Every Authorization header value printed is the SDK's redaction.
    let mut headers = 0;
    for (at, _) in log.match_indices("\"authorization\": ") {
        headers += 1;
        let value = &log[at + "\"authorization\": ".len()..];
        assert!(
            value.starts_with("** redacted"),
            "an Authorization header is logged: {}",
            &value[..value.len().min(120)]
        );
    }
    assert!(headers > 0, "requests with their headers are traced");
}

#[test]
fn without_allow_other_another_user_cannot_enter_the_mount() {
    let s3 = TestS3::start();
    let bucket = s3.bucket("others");
    bucket.put("a.txt", "a");
    let m = Mounted::start(&s3, &bucket.name, &[]);
    let as_nobody = |path: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
            .arg(path)
            .output()
            .expect("setpriv (util-linux) runs a command as another user")
    };
    let out = as_nobody(&m.path());
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "another user listed the mount: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(m);
    let m = Mounted::start(&s3, &bucket.name, &["--allow-other"]);
    let out = as_nobody(&m.path());
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("a.txt"),
        "with --allow-other another user sees the files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

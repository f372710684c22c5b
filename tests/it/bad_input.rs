//! Bad input fails before mounting: one clear line, non-zero exit, nothing
//! mounted and no process left behind.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

struct Failure {
    code: Option<i32>,
    stderr: String,
}

/// Runs s3mount against `mountpoint` and checks the invariants every failure
/// must keep; returns the exit code and the error text.
fn run_failing(
    s3: &TestS3,
    target: &str,
    mountpoint: &std::path::Path,
    extra: &[&str],
    foreground: bool,
) -> Failure {
    let mut cmd: Command = s3mount_command(&s3.endpoint);
    cmd.arg(target)
        .arg(mountpoint)
        .args(endpoint_args(&s3.endpoint))
        .args(extra);
    if foreground {
        cmd.arg("--foreground");
    }
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("s3mount: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected, got: {stderr}"
    );
    assert!(
        !is_mounted(mountpoint),
        "nothing may be mounted after a failure"
    );
    let needle = mountpoint.to_string_lossy().into_owned();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        processes_mentioning(&needle).is_empty(),
        "no s3mount process may be left behind"
    );
    Failure {
        code: out.status.code(),
        stderr: errors[0].to_owned(),
    }
}

#[test]
fn nonexistent_bucket_is_named() {
    let s3 = TestS3::start();
    let dir = TempDir::new("bad");
    let f = run_failing(&s3, "no-such-bucket-s3mount", dir.path(), &[], true);
    assert_eq!(f.code, Some(1));
    assert!(
        f.stderr
            .contains("bucket 'no-such-bucket-s3mount' does not exist"),
        "{}",
        f.stderr
    );
}

#[test]
fn wrong_credentials_are_named() {
    let mut s3 = TestS3::start();
    let b = s3.bucket("creds");
    s3.endpoint.secret_key = "0".repeat(64);
    let dir = TempDir::new("bad");
    let f = run_failing(&s3, &b.name, dir.path(), &[], true);
    assert_eq!(f.code, Some(1));
    assert!(
        f.stderr.contains("credentials were rejected"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains("AWS_SECRET_ACCESS_KEY"),
        "the fix is named: {}",
        f.stderr
    );
}

#[test]
fn unknown_access_key_is_named() {
    let mut s3 = TestS3::start();
    let b = s3.bucket("creds");
    s3.endpoint.access_key = "GK0000000000000000000000".into();
    let dir = TempDir::new("bad");
    let f = run_failing(&s3, &b.name, dir.path(), &[], true);
    assert!(
        f.stderr.contains("credentials were rejected") || f.stderr.contains("access denied"),
        "{}",
        f.stderr
    );
}

#[test]
fn refused_endpoint_is_named() {
    let mut s3 = TestS3::start();
    // A port nobody listens on: bind, note, release.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s3.endpoint.url = format!("http://127.0.0.1:{port}");
    let dir = TempDir::new("bad");
    let f = run_failing(&s3, "any-bucket", dir.path(), &[], true);
    assert_eq!(f.code, Some(1));
    assert!(f.stderr.contains("cannot reach endpoint"), "{}", f.stderr);
    assert!(f.stderr.contains("--endpoint-url"), "{}", f.stderr);
}

#[test]
fn silent_endpoint_times_out_in_bounded_time() {
    let mut s3 = TestS3::start();
    // Accepts connections (the kernel backlog does) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    s3.endpoint.url = format!("http://{}", listener.local_addr().unwrap());
    let dir = TempDir::new("bad");
    let started = std::time::Instant::now();
    let f = run_failing(&s3, "any-bucket", dir.path(), &[], true);
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        f.stderr.contains("did not answer") || f.stderr.contains("cannot reach"),
        "{}",
        f.stderr
    );
    drop(listener);
}

#[test]
fn missing_mountpoint_is_named() {
    let s3 = TestS3::start();
    let b = s3.bucket("mp");
    let dir = TempDir::new("bad");
    let missing = dir.path().join("does-not-exist");
    let f = run_failing(&s3, &b.name, &missing, &[], true);
    assert!(
        f.stderr.contains("does not exist") && f.stderr.contains("mkdir -p"),
        "{}",
        f.stderr
    );
}

#[test]
fn mountpoint_that_is_a_file_is_refused() {
    let s3 = TestS3::start();
    let b = s3.bucket("mp");
    let dir = TempDir::new("bad");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let f = run_failing(&s3, &b.name, &file, &[], true);
    assert!(f.stderr.contains("is not a directory"), "{}", f.stderr);
}

#[test]
fn mountpoint_already_mounted_is_refused() {
    let s3 = TestS3::start();
    let b = s3.bucket("twice");
    let m = Mounted::start(&s3, &b.name, &[]);
    let mut cmd = s3mount_command(&s3.endpoint);
    cmd.arg(&b.name)
        .arg(m.path())
        .args(endpoint_args(&s3.endpoint))
        .arg("--foreground");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("already a mount point"), "{stderr}");
    // The first mount still works.
    assert!(std::fs::read_dir(m.path()).is_ok());
}

#[test]
fn daemon_mode_reports_failure_with_exit_status() {
    let s3 = TestS3::start();
    let dir = TempDir::new("bad");
    let f = run_failing(&s3, "no-such-bucket-daemon", dir.path(), &[], false);
    assert_eq!(f.code, Some(1));
    assert!(f.stderr.contains("does not exist"), "{}", f.stderr);
}

#[test]
fn bad_target_and_options_are_usage_errors() {
    let s3 = TestS3::start();
    let dir = TempDir::new("bad");
    let mut cmd = s3mount_command(&s3.endpoint);
    cmd.arg("s3://").arg(dir.path()).arg("--foreground");
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("names no bucket"));

    let mut cmd = s3mount_command(&s3.endpoint);
    cmd.arg("b")
        .arg(dir.path())
        .args(["-o", "no_such_option=1"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(!is_mounted(dir.path()));
}

#[test]
fn daemon_mode_returns_only_once_mounted() {
    let s3 = TestS3::start();
    let b = s3.bucket("daemon");
    b.put("ready.txt", b"yes".to_vec());
    let dir = TempDir::new("daemon");
    let logs = TempDir::new("daemon-log");
    let log = logs.path().join("s3mount.log");
    let mut cmd = s3mount_command(&s3.endpoint);
    cmd.arg(&b.name)
        .arg(dir.path())
        .arg("-v")
        .arg("--log-file")
        .arg(&log)
        .args(endpoint_args(&s3.endpoint));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    // Unmount on every path out of this test.
    let _guard = UnmountOnDrop(dir.path().to_owned());
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No race: the mount answers as soon as the command has returned.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ready.txt")).unwrap(),
        "yes"
    );
    let needle = dir.path().to_string_lossy().into_owned();
    assert_eq!(processes_mentioning(&needle).len(), 1, "one daemon runs");
    let (code, _, err) = sh(&format!("umount '{}'", dir.path().display()));
    assert_eq!(code, 0, "{err}");
    eventually(
        "the daemon to exit after umount",
        Duration::from_secs(10),
        || processes_mentioning(&needle).is_empty(),
    );
    // The background daemon's log survives its detaching from the terminal.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("mounted") && text.contains("unmounted externally"),
        "log file: {text}"
    );
}

#[test]
fn an_unwritable_log_file_is_refused_before_mounting() {
    let dir = TempDir::new("badlog");
    let out = Command::new(env!("CARGO_BIN_EXE_s3mount"))
        .arg("some-bucket")
        .arg(dir.path())
        .arg("--log-file")
        .arg("/nonexistent-dir/s3mount.log")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot open --log-file") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!is_mounted(dir.path()));
}

#[test]
fn an_https_endpoint_is_accepted_and_spoken_to_with_tls() {
    use std::io::Read;
    let mut s3 = TestS3::start();
    // A plain TCP listener: it records what the client sends first, then
    // hangs up, so the TLS handshake fails after it was attempted.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    s3.endpoint.url = format!("https://{}", listener.local_addr().unwrap());
    let first_bytes = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 3];
        let got = conn.read_exact(&mut buf).map(|_| buf);
        drop(conn);
        got
    });
    let dir = TempDir::new("bad");
    let f = run_failing(&s3, "any-bucket", dir.path(), &[], true);
    let hello = first_bytes
        .join()
        .unwrap()
        .expect("the client sent nothing");
    // A TLS record of type handshake (22), protocol version 3.x.
    assert_eq!(hello[0], 0x16, "not a TLS handshake: {hello:?}");
    assert_eq!(hello[1], 0x03, "not a TLS handshake: {hello:?}");
    assert!(f.stderr.contains("endpoint"), "{}", f.stderr);
}

//! Reads under real network faults, injected by a TCP proxy between s3mount
//! and the S3 server: broken connections are resumed from the exact byte
//! where they broke, and stalled ones are abandoned.

use std::time::{Duration, Instant};

use crate::support::proxy::Faults;
use crate::support::*;

#[test]
fn reads_survive_connection_resets_with_identical_bytes() {
    let s3 = TestS3::start();
    let b = s3.bucket("reset");
    let data = random_bytes(256 * 1024 * 1024, 21);
    b.put("big.bin", data.clone());
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    proxy.set(Faults {
        reset_after: Some(3 * 1024 * 1024 + 777),
        ..Faults::default()
    });
    let read = std::fs::read(m.path().join("big.bin")).expect("read through resets");
    assert!(read == data, "bytes differ after resumed reads");
    assert!(
        proxy.resets() >= 5,
        "only {} resets were injected",
        proxy.resets()
    );
    assert!(
        m.log_text().contains("resuming ranged GET"),
        "no resume was logged:\n{}",
        m.log_text()
    );
}

#[test]
fn a_stalled_connection_is_abandoned_and_the_read_completes() {
    let s3 = TestS3::start();
    let b = s3.bucket("stall");
    let data = random_bytes(4 * 1024 * 1024, 22);
    b.put("f.bin", data.clone());
    let (proxy, endpoint) = s3.proxied();
    let m = Mounted::start_at(&endpoint, &b.name, &[]);
    proxy.set(Faults {
        stall_after: Some(200 * 1024),
        max_stalls: Some(2),
        ..Faults::default()
    });
    let started = Instant::now();
    let read = std::fs::read(m.path().join("f.bin")).expect("read through a stall");
    assert!(read == data, "bytes differ after a stall");
    assert!(proxy.stalls() >= 1, "no stall was injected");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn latency_is_injected_before_each_response() {
    let s3 = TestS3::start();
    let b = s3.bucket("latency");
    b.put("f", b"x".to_vec());
    let (proxy, endpoint) = s3.proxied();
    proxy.set(Faults {
        first_byte_delay: Duration::from_millis(200),
        ..Faults::default()
    });
    let client = client_for(&endpoint);
    let started = Instant::now();
    block_on(client.head_object().bucket(&b.name).key("f").send()).unwrap();
    block_on(client.head_object().bucket(&b.name).key("f").send()).unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "two requests took only {took:?}"
    );
    assert!(proxy.response_bytes() > 0);
}

#[test]
fn a_panicking_handler_answers_eio_and_the_mount_goes_on() {
    let s3 = TestS3::start();
    let b = s3.bucket("panic");
    b.put("ok.txt", b"still here".to_vec());
    b.put("boom", b"x".to_vec());
    let m = Mounted::start_with_env(
        &s3.endpoint,
        &b.name,
        &[],
        &[("S3MOUNT_TEST_PANIC_ON_LOOKUP", "boom")],
    );
    let root = m.path();
    for _ in 0..3 {
        let e = std::fs::metadata(root.join("boom")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        assert_eq!(std::fs::read(root.join("ok.txt")).unwrap(), b"still here");
    }
    std::fs::write(root.join("new.txt"), b"written after").unwrap();
    assert_eq!(b.get("new.txt"), b"written after");
    assert!(is_mounted(&root), "the mount is still there");
    assert!(
        m.log_text().contains("panicked"),
        "the panic is logged:\n{}",
        m.log_text()
    );
}

//! The integration tests, one module per area, built as one test binary
//! (one link instead of ten). Each test runs against a real S3 server
//! (the Garage that scripts/with-garage.sh starts, or the endpoint named by
//! S3MOUNT_TEST_ENDPOINT) and mounts the built binary with real FUSE.
//! `tests/soak.rs` is the other test binary; both use `tests/support/`.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod catalog;
mod catalog_snapshot;
mod claims;
mod data_cache;
mod everyday_tools;
mod misbehaving_s3;
mod mount_read;
mod passthrough;
mod posix_metadata;
mod read_engine;
mod resilience;
mod service;
mod writes;

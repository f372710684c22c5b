//! The checks made before anything is mounted: the mountpoint, then one
//! cheap request that proves the endpoint answers, the credentials work and
//! the bucket exists. Each failure is one line naming the problem and the
//! fix. `s3mount doctor` runs the same request checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Target;
use crate::service::kernel_mount;
use crate::store::{ObjectStore, S3Settings, S3Store, StoreError};

use super::MountError;

/// How long the checks before mounting may take in all.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the first listing is retried through transient errors.
const PREFLIGHT_RETRY: Duration = Duration::from_secs(3);

/// Checks the mountpoint: exists, is a directory, is not already mounted.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MountError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(MountError(format!(
                "mountpoint {shown} is not a directory; give an existing directory"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError(format!(
                "mountpoint {shown} does not exist; create it first with `mkdir -p {shown}`"
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(MountError(format!(
                "mountpoint {shown} is a dead FUSE mount (transport endpoint is not connected); clear it with `umount -l {shown}`"
            )))
        }
        Err(e) => return Err(MountError(format!("cannot use mountpoint {shown}: {e}"))),
    }
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| MountError(format!("cannot resolve mountpoint {shown}: {e}")))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if kernel_mount::mount_points(&mountinfo).any(|p| p == canonical) {
        return Err(MountError(format!(
            "{shown} is already a mount point; unmount it first (`umount {shown}`) or choose another directory"
        )));
    }
    Ok(canonical)
}

/// One cheap request proves the endpoint answers, the credentials work and
/// the bucket exists, before anything is mounted.
pub async fn preflight(settings: &S3Settings, target: &Target) -> Result<S3Store, MountError> {
    let secs = PREFLIGHT_TIMEOUT.as_secs();
    let endpoint_hint = settings.endpoint_url.as_deref().unwrap_or("AWS S3");
    let checks = async {
        // A mount against a wrong endpoint fails in seconds with a clear
        // message; the full --retry-timeout applies once it is mounted.
        let quick = S3Settings {
            retry_timeout: PREFLIGHT_RETRY,
            ..settings.clone()
        };
        let store = S3Store::connect(&quick).await;
        if let Err(e) = store.check_credentials().await {
            return Err(MountError(format!(
                "{e}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --profile NAME"
            )));
        }
        match store
            .list_page(&target.prefix, Some("/"), None, Some(1))
            .await
        {
            Ok(_) => {
                store.set_retry_timeout(settings.retry_timeout);
                Ok(store)
            }
            Err(e) => Err(explain(&e, &store, target)),
        }
    };
    tokio::time::timeout(PREFLIGHT_TIMEOUT, checks)
        .await
        .unwrap_or_else(|_| {
            Err(MountError(format!(
                "endpoint {endpoint_hint} did not answer within {secs}s; check --endpoint-url and the network"
            )))
        })
}

fn explain(e: &StoreError, store: &S3Store, target: &Target) -> MountError {
    let endpoint = store.endpoint();
    let bucket = &target.bucket;
    MountError(match e {
        StoreError::NoSuchBucket => format!(
            "bucket '{bucket}' does not exist at {endpoint}; check the bucket name (and --endpoint-url/--region)"
        ),
        StoreError::BadCredentials(code) => format!(
            "credentials were rejected by {endpoint} ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --profile"
        ),
        StoreError::AccessDenied(code) => format!(
            "access denied listing s3://{bucket}/{} ({code}); the credentials need s3:ListBucket on this bucket",
            target.prefix
        ),
        StoreError::NoCredentials(m) => format!(
            "no AWS credentials found ({m}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --profile NAME"
        ),
        StoreError::Unreachable(m) => format!(
            "cannot reach endpoint {endpoint} ({m}); check --endpoint-url and that the server is running"
        ),
        StoreError::Timeout(m) => format!(
            "endpoint {endpoint} did not answer in time ({m}); check --endpoint-url and the network"
        ),
        other => format!("listing s3://{bucket}/{} at {endpoint} failed: {other}", target.prefix),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_mountpoint_names_the_fix() {
        let err = check_mountpoint(Path::new("/nonexistent/s3mount-test")).unwrap_err();
        assert!(
            err.0.contains("does not exist") && err.0.contains("mkdir -p"),
            "{}",
            err.0
        );
    }

    #[test]
    fn root_is_already_a_mount_point() {
        let err = check_mountpoint(Path::new("/")).unwrap_err();
        assert!(err.0.contains("already a mount point"), "{}", err.0);
    }
}

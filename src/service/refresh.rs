//! `s3mount refresh PATH...`: make a running mount list directories again now.
//!
//! The request travels as an ioctl on the opened path; the daemon re-lists
//! the directory (or the file's directory) before answering, so when this
//! command returns the mount shows what S3 holds.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use crate::fuse::REFRESH_IOCTL;

pub fn run(paths: &[OsString]) -> ExitCode {
    if paths.is_empty() || paths.iter().any(|p| p == "-h" || p == "--help") {
        eprintln!("usage: s3mount refresh PATH...  (a directory or file inside an s3mount mount)");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for path in paths {
        let shown = std::path::Path::new(path).display();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("s3mount: error: cannot open {shown}: {e}");
                failed = true;
                continue;
            }
        };
        // SAFETY: the descriptor is open for the duration of the call, and
        // the request takes no argument.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), REFRESH_IOCTL as _) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::ENOSYS)
            ) {
                eprintln!("s3mount: error: {shown} is not inside an s3mount mount; give a path under the mountpoint");
            } else {
                eprintln!("s3mount: error: refreshing {shown} failed: {err}");
            }
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

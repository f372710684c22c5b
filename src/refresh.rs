//! `s3mount refresh PATH...`: make a running mount list directories again now.
//!
//! The request travels as a read of the extended attribute
//! `user.s3mount.refresh` on the path; the daemon re-lists the directory (or
//! the file's directory) before answering, so when this command returns the
//! mount shows what S3 holds.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use crate::fuse::REFRESH_XATTR;

pub fn run(paths: &[OsString]) -> ExitCode {
    if paths.is_empty() || paths.iter().any(|p| p == "-h" || p == "--help") {
        eprintln!("usage: s3mount refresh PATH...  (a directory or file inside an s3mount mount)");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for path in paths {
        let shown = std::path::Path::new(path).display();
        let Ok(c_path) = CString::new(path.as_bytes()) else {
            eprintln!("s3mount: error: {shown}: path contains a NUL byte");
            failed = true;
            continue;
        };
        let name = CString::new(REFRESH_XATTR).expect("constant has no NUL");
        let mut answer = [0u8; 64];
        // SAFETY: both strings are NUL-terminated and live across the call;
        // the buffer pointer and length describe `answer` exactly.
        let rc = unsafe {
            libc::getxattr(
                c_path.as_ptr(),
                name.as_ptr(),
                answer.as_mut_ptr().cast(),
                answer.len(),
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENODATA)
                || err.raw_os_error() == Some(libc::ENOTSUP)
            {
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

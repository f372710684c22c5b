//! Background mode: return to the caller only once the mount is live.
//!
//! The parent re-executes itself as a child in its own process group and
//! waits for the child to report "ready" on a pipe. If the child fails first,
//! its one-line error has already gone to the shared stderr and the parent
//! exits with the child's status, so `s3mount ... && ls /mnt` never races.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

const CHILD_ENV: &str = "S3MOUNT_DAEMON_CHILD";
const READY: &str = "ready";

pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Starts the daemon child and waits until it is mounted or has failed.
pub fn spawn_and_wait(args: &[std::ffi::OsString]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("s3mount: error: cannot find own executable to start the daemon: {e}; run with --foreground");
            return ExitCode::from(1);
        }
    };
    let child = Command::new(exe)
        .args(args)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group keeps a Ctrl-C meant for the shell from
        // reaching the daemon.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("s3mount: error: cannot start the daemon: {e}; run with --foreground");
            return ExitCode::from(1);
        }
    };
    let stdout = child.stdout.take().expect("stdout was piped");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    if line.trim() == READY {
        return ExitCode::SUCCESS;
    }
    match child.wait() {
        Ok(status) => match status.code() {
            Some(0) | None => ExitCode::from(1),
            Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
        },
        Err(_) => ExitCode::from(1),
    }
}

/// Tells a waiting parent that the mount is live, then lets go of the
/// caller's stdout and stderr: a caller that captures output (`$(s3mount ..)`)
/// waits for end-of-file, which never comes while the daemon holds them.
pub fn notify_ready() {
    if !is_child() {
        return;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

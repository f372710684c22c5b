//! The systemd notify protocol: tells a `Type=notify` service manager when
//! the mount is ready, what it is doing, and that it is stopping.
//!
//! The protocol is one datagram of `KEY=VALUE` lines sent to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Without that variable every call does nothing, so the same binary runs
//! under systemd, from a shell and from mount(8).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::debug;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service
/// manager, if there is one. Failures are logged and otherwise ignored: a
/// missing manager must never stop the mount.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let result = (|| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::path::Path::new(&path))?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = result {
        debug!(socket = ?path, error = %e, "cannot notify the service manager");
    }
}

/// The mount answers requests.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// A new status line for `systemctl status`.
pub fn status(status: &str) {
    send(&format!("STATUS={status}"));
}

/// Shutdown has begun.
pub fn stopping(status: &str) {
    send(&format!("STOPPING=1\nSTATUS={status}"));
}

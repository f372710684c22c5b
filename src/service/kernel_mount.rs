//! Attaching the FUSE device to the mountpoint, detaching it, and the
//! auto-unmount watchdog.
//!
//! As root s3mount calls mount(2) itself with the filesystem type
//! `fuse.s3mount`, so `findmnt`, `df -t fuse.s3mount` and `umount -t` see
//! what is mounted (fuser's own direct mount says only `fuse`). Other users
//! go through fuser, which asks the setuid `fusermount3`.
//!
//! `--auto-unmount` starts a small watchdog process holding one end of a
//! pipe. When the daemon dies for any reason, even SIGKILL, the pipe closes
//! and the watchdog detaches the mount, so no "Transport endpoint is not
//! connected" directory is left behind.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The filesystem type this daemon's mounts carry.
pub const FSTYPE: &str = "fuse.s3mount";
/// The hidden subcommand the watchdog runs as.
pub const WATCHDOG_COMMAND: &str = "__auto-unmount";

/// How to mount: what the kernel needs to know.
pub struct KernelOptions<'a> {
    pub source: &'a str,
    pub read_only: bool,
    /// Let users other than the mounting one in (the kernel's allow_other).
    pub allow_other: bool,
}

/// Whether this process may call mount(2) itself.
pub fn can_mount_directly() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Opens /dev/fuse and mounts it at `mountpoint` as `fuse.s3mount`; returns
/// the device, which fuser then serves.
pub fn attach(mountpoint: &Path, options: &KernelOptions) -> std::io::Result<OwnedFd> {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    let mut data = format!(
        "fd={},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
        device.as_raw_fd(),
        root_mode
    );
    if options.allow_other {
        data.push_str(",allow_other");
    }
    use nix::mount::MsFlags;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    if options.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some(options.source),
        mountpoint,
        Some(FSTYPE),
        flags,
        Some(data.as_str()),
    )?;
    Ok(device.into())
}

/// Unmounts `mountpoint`; `lazy` detaches it even while files are open.
pub fn detach(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    if !can_mount_directly() {
        let mut cmd = Command::new("fusermount3");
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        let status = cmd.arg(mountpoint).stderr(Stdio::null()).status()?;
        return if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other("fusermount3 -u failed"))
        };
    }
    use nix::mount::MntFlags;
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    nix::mount::umount2(mountpoint, flags)?;
    Ok(())
}

/// The watchdog process. If this handle is dropped without [`disarm`]
/// (the daemon died or failed), the watchdog detaches the mount.
///
/// [`disarm`]: Watchdog::disarm
pub struct Watchdog {
    pipe: File,
}

/// Written to the watchdog before an orderly exit.
const DISARM: u8 = b'd';

impl Watchdog {
    /// The daemon has unmounted by itself: the watchdog leaves without
    /// touching the mountpoint, where a new mount may already live.
    pub fn disarm(mut self) {
        use std::io::Write;
        let _ = self.pipe.write_all(&[DISARM]);
    }
}

/// Starts the watchdog for the mount of device `dev` at `mountpoint`.
pub fn start_watchdog(mountpoint: &Path, dev: u64) -> std::io::Result<Watchdog> {
    let (read_end, write_end) = std::io::pipe()?;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .arg(WATCHDOG_COMMAND)
        .arg(mountpoint)
        .arg(format!("{}:{}", libc::major(dev), libc::minor(dev)))
        .stdin(Stdio::from(OwnedFd::from(read_end)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Watchdog {
        pipe: File::from(OwnedFd::from(write_end)),
    })
}

/// The watchdog's body: waits until the daemon is gone (its stdin reaches
/// end-of-file), then detaches the mount if it is still the daemon's.
pub fn run_watchdog(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let (Some(mountpoint), Some(dev)) = (args.first(), args.get(1)) else {
        return std::process::ExitCode::from(2);
    };
    // The service manager and the terminal signal the whole group; the
    // watchdog must outlive the daemon to be of any use.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: SIG_IGN is a valid disposition and no handler is involved.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    let mut disarmed = false;
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => disarmed |= buf[..n].contains(&DISARM),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if disarmed {
        return std::process::ExitCode::SUCCESS;
    }
    let mountpoint = PathBuf::from(mountpoint);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if still_mounted(&mountinfo, &mountpoint, &dev.to_string_lossy()) {
        let _ = detach(&mountpoint, true);
    }
    std::process::ExitCode::SUCCESS
}

/// Whether the topmost mount at `mountpoint` in `mountinfo` is a
/// `fuse.s3mount` mount of device `dev` (`major:minor`): a mount that
/// someone else made there since, or over it, must be left alone (unmounting
/// a path acts on its topmost mount).
fn still_mounted(mountinfo: &str, mountpoint: &Path, dev: &str) -> bool {
    let topmost = mountinfo
        .lines()
        .rev()
        .map(|line| line.split(' ').collect::<Vec<&str>>())
        .find(|fields| {
            fields
                .get(4)
                .is_some_and(|p| Path::new(&unescape_octal(p)) == mountpoint)
        });
    topmost.is_some_and(|fields| {
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1));
        fields.get(2) == Some(&dev) && fstype == Some(&FSTYPE)
    })
}

/// The device number of what is mounted at `mountpoint` (answered by the
/// request loop, which must be running).
pub fn device_of(mountpoint: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(mountpoint)?.dev())
}

/// Mount points listed in /proc/self/mountinfo (field 5, octal-escaped).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_with_escaped_spaces() {
        let info = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /srv rw - ext4 /dev/x rw\n";
        let points: Vec<PathBuf> = mount_points(info).collect();
        assert_eq!(
            points,
            vec![PathBuf::from("/mnt/with space"), PathBuf::from("/srv")]
        );
    }

    #[test]
    fn watchdog_only_touches_its_own_mount() {
        let info = "50 30 0:61 / /mnt/data rw,nosuid - fuse.s3mount b/p rw\n\
                    51 30 0:62 / /mnt/other\\040dir rw - fuse.s3mount b/q rw\n\
                    52 30 0:63 / /mnt/data2 rw - fuse b/p rw\n";
        assert!(still_mounted(info, Path::new("/mnt/data"), "0:61"));
        assert!(still_mounted(info, Path::new("/mnt/other dir"), "0:62"));
        // Remounted since (another device), or not ours.
        assert!(!still_mounted(info, Path::new("/mnt/data"), "0:70"));
        assert!(!still_mounted(info, Path::new("/mnt/data2"), "0:63"));
        assert!(!still_mounted(info, Path::new("/mnt/none"), "0:61"));
        // Something mounted over ours: the topmost mount is not ours.
        let covered = format!("{info}53 50 0:64 / /mnt/data rw - tmpfs tmpfs rw\n");
        assert!(!still_mounted(&covered, Path::new("/mnt/data"), "0:61"));
    }
}

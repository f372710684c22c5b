//! Which opens of each inode the kernel reads itself (FUSE passthrough).
//!
//! The kernel's rules (Linux 6.9+): while any open file of an inode is
//! passed through, every open of that inode must be passed through to the
//! same backing file, and an inode open the ordinary way cannot get a
//! passthrough open; the kernel fails an open that breaks them with EIO.
//! [`PassthroughOpens`] keeps the daemon's side of those rules: it decides
//! each open's mode, shares one [`BackingId`] per inode, and lets go of it
//! with the inode's last passthrough handle. An open counts from the moment
//! its mode is decided (a write open reserves its place before the file is
//! opened) until its RELEASE, so the daemon never thinks an inode less busy
//! than the kernel does. A RELEASE may reach the daemon after the next OPEN,
//! though, so an open that must be ordinary while passthrough handles are
//! counted waits a moment for them to go before it answers ETXTBSY.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::BackingId;
use parking_lot::Mutex;
use tracing::{debug, warn};

/// How long an open waits for passthrough handles of its inode to be
/// released before it is refused.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// How one open was answered.
pub enum OpenMode {
    /// The kernel reads this backing file itself.
    Passthrough(Arc<BackingId>),
    /// Reads come to the daemon.
    Ordinary,
    /// The inode is passed through to another file (another version of the
    /// object) and this open cannot join it: ETXTBSY.
    Busy,
}

#[derive(Default)]
struct InodeOpens {
    ordinary: u32,
    passthrough: u32,
    /// The backing file of the passthrough opens, and its (device, inode).
    backing: Option<(Arc<BackingId>, (u64, u64))>,
}

pub struct PassthroughOpens {
    inodes: Mutex<HashMap<u64, InodeOpens>>,
    /// Handle → (inode, passed through).
    handles: Mutex<HashMap<u64, (u64, bool)>>,
    /// Cleared when the kernel refuses a backing file (no CAP_SYS_ADMIN, a
    /// cache on a stacked filesystem): said once, and opens are ordinary.
    enabled: AtomicBool,
}

impl PassthroughOpens {
    pub fn new(enabled: bool) -> Self {
        PassthroughOpens {
            inodes: Mutex::default(),
            handles: Mutex::default(),
            enabled: AtomicBool::new(enabled),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }

    /// Reserves an ordinary open of `ino` (one that may write), waiting a
    /// moment for passthrough handles to be released; false if they stay.
    pub async fn reserve_ordinary(&self, ino: u64) -> bool {
        let started = Instant::now();
        loop {
            {
                let mut inodes = self.inodes.lock();
                let state = inodes.entry(ino).or_default();
                if state.passthrough == 0 {
                    state.ordinary += 1;
                    return true;
                }
            }
            if started.elapsed() >= RELEASE_WAIT {
                debug!(ino, "an ordinary open of a file read through passthrough");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Gives back a reservation whose open failed.
    pub fn unreserve(&self, ino: u64) {
        let mut inodes = self.inodes.lock();
        if let Some(state) = inodes.get_mut(&ino) {
            state.ordinary = state.ordinary.saturating_sub(1);
        }
        drop_if_idle(&mut inodes, ino);
    }

    /// Records handle `fh` of a reserved ordinary open (or of a new file).
    pub fn opened_ordinary(&self, fh: u64, ino: u64, reserved: bool) {
        if !reserved {
            self.inodes.lock().entry(ino).or_default().ordinary += 1;
        }
        self.handles.lock().insert(fh, (ino, false));
    }

    /// Decides a read-only open of `ino` (handle `fh`) offered `backing`,
    /// the object's wholly cached data file; `open_backing` registers a
    /// file with the kernel.
    pub async fn open_for_reading(
        &self,
        ino: u64,
        fh: u64,
        backing: Option<File>,
        open_backing: &(dyn Fn(&File) -> std::io::Result<BackingId> + Sync),
    ) -> OpenMode {
        let started = Instant::now();
        let file_id = backing
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        loop {
            if let Some(mode) = self.try_open(ino, fh, backing.as_ref(), file_id, open_backing) {
                return mode;
            }
            if started.elapsed() >= RELEASE_WAIT {
                return OpenMode::Busy;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One try of [`PassthroughOpens::open_for_reading`]: `None` while
    /// passthrough handles of another file keep this open from being
    /// answered.
    fn try_open(
        &self,
        ino: u64,
        fh: u64,
        backing: Option<&File>,
        file_id: Option<(u64, u64)>,
        open_backing: &(dyn Fn(&File) -> std::io::Result<BackingId> + Sync),
    ) -> Option<OpenMode> {
        let mut inodes = self.inodes.lock();
        let state = inodes.entry(ino).or_default();
        if let (Some(file), Some(id), true) = (backing, file_id, self.enabled()) {
            if state.ordinary == 0 {
                match &state.backing {
                    Some((shared, of)) if *of == id && state.passthrough > 0 => {
                        let shared = shared.clone();
                        state.passthrough += 1;
                        self.handles.lock().insert(fh, (ino, true));
                        return Some(OpenMode::Passthrough(shared));
                    }
                    Some(_) if state.passthrough > 0 => return None,
                    _ => match open_backing(file) {
                        Ok(backing_id) => {
                            let shared = Arc::new(backing_id);
                            state.backing = Some((shared.clone(), id));
                            state.passthrough += 1;
                            self.handles.lock().insert(fh, (ino, true));
                            return Some(OpenMode::Passthrough(shared));
                        }
                        Err(e) => {
                            warn!(error = %e, "the kernel refused a backing file: passthrough off, cached files are read through the daemon");
                            self.disable();
                        }
                    },
                }
            }
        }
        if state.passthrough > 0 {
            return None;
        }
        state.ordinary += 1;
        self.handles.lock().insert(fh, (ino, false));
        Some(OpenMode::Ordinary)
    }

    /// Notes that handle `fh` was released; the inode's backing file goes
    /// with its last passthrough handle.
    pub fn released(&self, fh: u64) {
        let Some((ino, passed)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock();
        if let Some(state) = inodes.get_mut(&ino) {
            if passed {
                state.passthrough = state.passthrough.saturating_sub(1);
                if state.passthrough == 0 {
                    state.backing = None;
                }
            } else {
                state.ordinary = state.ordinary.saturating_sub(1);
            }
        }
        drop_if_idle(&mut inodes, ino);
    }
}

fn drop_if_idle(inodes: &mut HashMap<u64, InodeOpens>, ino: u64) {
    if inodes
        .get(&ino)
        .is_some_and(|s| s.ordinary == 0 && s.passthrough == 0)
    {
        inodes.remove(&ino);
    }
}

//! The FUSE adapter: translates kernel requests into [`S3Fs`] calls.
//!
//! It stays thin on purpose. Each request that may touch the network is
//! moved onto the tokio runtime with its reply object, so the kernel request
//! loop never waits for S3 and many requests proceed concurrently. Errors
//! become errno only through [`FsError::errno`].

use std::ffi::OsStr;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

mod passthrough;

use crate::error::FsError;
use crate::fs::{Attr, AttrChange, AttrsAfterRead, Creator, DirRow, S3Fs};
use crate::read::PageCache;
use crate::store::ObjectStore;
use passthrough::{OpenMode, PassthroughOpens};

/// How long the kernel may cache names and attributes before asking again.
/// The catalog answers repeated questions from memory, so this stays short
/// and changes seen by the catalog reach the kernel quickly.
const KERNEL_TTL: Duration = Duration::from_secs(1);
/// Rows prepared per readdir call: a little more than the kernel's 4 KiB
/// buffer holds, so little is built only to be thrown away.
const READDIR_BATCH: usize = 96;

pub struct FuseAdapter<S: ObjectStore> {
    fs: Arc<S3Fs<S>>,
    rt: Handle,
    /// Tells the kernel what changed behind its caches; set once the
    /// session exists (see [`FuseAdapter::kernel_notifier`]).
    kernel: Arc<OnceLock<Notifier>>,
    /// Which opens the kernel reads itself; enabled at init if the kernel
    /// offers passthrough and the mount wants it.
    opens: Arc<PassthroughOpens>,
    passthrough_wanted: bool,
}

impl<S: ObjectStore> FuseAdapter<S> {
    /// With `passthrough`, files the disk cache holds whole are read by the
    /// kernel itself where it can.
    pub fn new(fs: Arc<S3Fs<S>>, rt: Handle, passthrough: bool) -> Self {
        FuseAdapter {
            fs,
            rt,
            kernel: Arc::default(),
            opens: Arc::new(PassthroughOpens::new(false)),
            passthrough_wanted: passthrough,
        }
    }

    /// Where the session's notifier goes once the session is made (the
    /// adapter is moved into the session, so it cannot be handed it later).
    pub fn kernel_notifier(&self) -> Arc<OnceLock<Notifier>> {
        self.kernel.clone()
    }

    /// Asks the kernel for passthrough; says in one line why not when it
    /// cannot have it (the files are then read through the daemon).
    fn init_passthrough(&mut self, config: &mut KernelConfig) {
        let refused = if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            Some("the kernel does not offer FUSE passthrough (Linux 6.9 or later has it)")
        } else if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_err()
            // Cache files on a plain filesystem (depth 0) need depth 1.
            || config.set_max_stack_depth(1).is_err()
        {
            Some("the kernel refused FUSE passthrough")
        } else {
            None
        };
        match refused {
            Some(why) => tracing::info!(
                reason = why,
                "passthrough off: files the data cache holds whole are read through the daemon"
            ),
            None => {
                self.opens = Arc::new(PassthroughOpens::new(true));
                self.fs.offer_backing_files(true);
                tracing::info!(
                    "passthrough on: the kernel reads files the data cache holds whole by itself"
                );
            }
        }
    }

    /// Runs `op` on the runtime and hands its result to `reply`.
    fn spawn<T, F, R>(&self, op: impl FnOnce(Arc<S3Fs<S>>) -> F + Send + 'static, reply: R)
    where
        F: std::future::Future<Output = Result<T, FsError>> + Send + 'static,
        T: Send + 'static,
        R: Respond<T> + Send + 'static,
    {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match op(fs).await {
                Ok(value) => reply.ok(value),
                Err(e) => reply.err(errno(&e)),
            }
        });
    }
}

/// Runs a handler on the request loop's own thread. A panic there would end
/// the loop, and with it the mount; it is caught and logged instead, and the
/// request answered EIO (a reply dropped unsent says EIO). Handlers on the
/// runtime are tasks: a panic ends only that task, and its reply says EIO.
fn contained<T>(request: &'static str, handler: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)) {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::error!(
                request,
                "a request handler panicked; answered EIO, the mount goes on"
            );
            None
        }
    }
}

/// Who asks to create something, with the mode it asks for.
fn creator(req: &Request, mode: u32, umask: u32) -> Creator {
    Creator {
        uid: req.uid(),
        gid: req.gid(),
        perm: mode & !umask & 0o7777,
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: file_type(a),
        perm: a.perm,
        nlink: if a.is_dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        // Tools size their buffers by st_blksize; large buffers mean large reads.
        blksize: 1 << 20,
        flags: 0,
    }
}

fn file_type(a: &Attr) -> FileType {
    if a.is_dir {
        FileType::Directory
    } else if a.is_symlink {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

/// How long the kernel may keep `a`: not at all while the object's
/// metadata is still to be learned, so its next stat asks again.
fn ttl_of(a: &Attr) -> &'static Duration {
    const NOW: Duration = Duration::ZERO;
    match a.provisional {
        true => &NOW,
        false => &KERNEL_TTL,
    }
}

/// The ioctl that forces a refresh (see `s3mount refresh`): `_IO(0xB3, 1)`,
/// a type no kernel driver uses.
pub const REFRESH_IOCTL: u32 = 0xB301;

/// A reply object that can carry a successful value of type `T`.
trait Respond<T> {
    fn ok(self, value: T);
    fn err(self, errno: Errno);
}

/// `Respond::err` for a fuser reply type: they all answer errors the same
/// way, through their own `error` method.
macro_rules! reply_error {
    () => {
        fn err(self, errno: Errno) {
            self.error(errno);
        }
    };
}

impl Respond<Attr> for ReplyEntry {
    fn ok(self, a: Attr) {
        self.entry(ttl_of(&a), &file_attr(&a), Generation(0));
    }
    reply_error!();
}

impl Respond<Attr> for ReplyAttr {
    fn ok(self, a: Attr) {
        self.attr(ttl_of(&a), &file_attr(&a));
    }
    reply_error!();
}

/// A refresh answer.
impl Respond<()> for ReplyIoctl {
    fn ok(self, (): ()) {
        self.ioctl(0, &[]);
    }
    reply_error!();
}

impl Respond<Vec<DirRow>> for ReplyDirectory {
    fn ok(mut self, rows: Vec<DirRow>) {
        for row in rows {
            let kind = file_type(&row.attr);
            if self.add(INodeNo(row.attr.ino), row.next_offset, kind, &row.name) {
                break;
            }
        }
        ReplyDirectory::ok(self);
    }
    reply_error!();
}

impl Respond<bytes::Bytes> for ReplyData {
    fn ok(self, data: bytes::Bytes) {
        self.data(&data);
    }
    reply_error!();
}

impl Respond<()> for ReplyEmpty {
    fn ok(self, (): ()) {
        ReplyEmpty::ok(self);
    }
    reply_error!();
}

impl Respond<u32> for ReplyWrite {
    fn ok(self, written: u32) {
        self.written(written);
    }
    reply_error!();
}

/// `create` result: the new file and its write handle.
impl Respond<(Attr, u64)> for ReplyCreate {
    fn ok(self, (a, fh): (Attr, u64)) {
        self.created(
            &KERNEL_TTL,
            &file_attr(&a),
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        );
    }
    reply_error!();
}

/// `opendir` result: the directory handle.
impl Respond<u64> for ReplyOpen {
    fn ok(self, fh: u64) {
        self.opened(FileHandle(fh), FopenFlags::empty());
    }
    reply_error!();
}

/// How a handle may use the kernel's page cache, as open flags.
fn page_cache_flags(cache: PageCache) -> FopenFlags {
    match cache {
        PageCache::Keep => FopenFlags::FOPEN_KEEP_CACHE,
        PageCache::Invalidate => FopenFlags::empty(),
        PageCache::Bypass => FopenFlags::FOPEN_DIRECT_IO,
    }
}

fn name_str(name: &OsStr) -> Result<String, FsError> {
    // S3 keys are UTF-8; a name that is not cannot exist in the bucket.
    name.to_str().map(str::to_owned).ok_or(FsError::NotFound)
}

impl<S: ObjectStore> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // readdirplus carries attributes, so `ls -l` costs no lookup per
        // entry; attributes come free with our listings, so it is always
        // used (no READDIRPLUS_AUTO, which falls back to plain readdir after
        // the first batch and then pays a LOOKUP per entry). Parallel dirops
        // let lookups in one directory overlap.
        // Atomic O_TRUNC passes O_TRUNC to open instead of a separate
        // truncate first, so replacing a file is one upload, not two.
        // Files read without the page cache (columnar ones) can still be
        // memory-mapped (Linux 6.6+), and the pieces of one large read of
        // them are sent at once, not one after the other (async DIO).
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
            | InitFlags::FUSE_ASYNC_DIO;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if self.passthrough_wanted {
            self.init_passthrough(config);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_str(name);
        self.spawn(
            move |fs| async move { fs.lookup(parent.0, &name?).await },
            reply,
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let fh = fh.map(|fh| fh.0);
        self.spawn(move |fs| async move { fs.getattr(ino.0, fh).await }, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, opens) = (self.fs.clone(), self.opens.clone());
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        self.rt.spawn(async move {
            if writes {
                if !opens.reserve_ordinary(ino.0).await {
                    return reply.error(Errno::from_i32(libc::ETXTBSY));
                }
                match fs.open(ino.0, flags.0).await {
                    Ok(o) => {
                        opens.opened_ordinary(o.fh, ino.0, true);
                        reply.opened(FileHandle(o.fh), page_cache_flags(o.cache));
                    }
                    Err(e) => {
                        opens.unreserve(ino.0);
                        reply.error(errno(&e));
                    }
                }
                return;
            }
            let o = match fs.open(ino.0, flags.0).await {
                Ok(o) => o,
                Err(e) => return reply.error(errno(&e)),
            };
            let register = |file: &std::fs::File| reply.open_backing(file);
            let mode = opens
                .open_for_reading(ino.0, o.fh, o.backing, &register)
                .await;
            if !opens.enabled() {
                fs.offer_backing_files(false);
            }
            match mode {
                OpenMode::Passthrough(backing) => {
                    let counter = &fs.read_stats().passthrough_opens;
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &backing);
                }
                OpenMode::Ordinary => {
                    reply.opened(FileHandle(o.fh), page_cache_flags(o.cache));
                }
                OpenMode::Busy => {
                    // Never handed to the kernel: released here.
                    fs.release(fs.begin_release(ino.0, o.fh)).await;
                    reply.error(Errno::from_i32(libc::ETXTBSY));
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        let kernel = self.kernel.clone();
        tracing::trace!(ino = ino.0, fh = fh.0, offset, size, "read");
        self.rt.spawn(async move {
            match fs.read(ino.0, fh.0, offset, size).await {
                Ok((bytes, attrs)) => {
                    // Only the attributes (offset -1: no page is touched).
                    let drop_attrs = || {
                        if let Some(notifier) = kernel.get() {
                            let _ = notifier.inval_inode(ino, -1, 0);
                        }
                    };
                    match attrs {
                        AttrsAfterRead::Unchanged => reply.data(&bytes),
                        AttrsAfterRead::Grew => {
                            drop_attrs();
                            reply.data(&bytes);
                        }
                        AttrsAfterRead::ShrankOrKept => {
                            reply.data(&bytes);
                            drop_attrs();
                        }
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move { fs.flush(fh.0).await }, reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        self.spawn(move |fs| async move { fs.fsync(fh.0).await }, reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Noted here, on the request loop's thread, so a request sent after
        // close(2) returned finds the file closing (see S3Fs::begin_release).
        self.opens.released(fh.0);
        let Some(release) = contained("release", || self.fs.begin_release(ino.0, fh.0)) else {
            return reply.error(Errno::EIO);
        };
        self.spawn(
            move |fs| async move {
                fs.release(release).await;
                Ok(())
            },
            reply,
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |fs| async move { fs.opendir(ino.0).await }, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.spawn(
            move |fs| async move {
                let rows = fs.readdir(ino.0, fh.0, offset, READDIR_BATCH).await?;
                // Plain readdir rows give the kernel no lookup to hold.
                fs.unsent(&rows);
                Ok(rows)
            },
            reply,
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            let rows = match fs.readdir(ino.0, fh.0, offset, READDIR_BATCH).await {
                Ok(rows) => rows,
                Err(e) => return reply.error(errno(&e)),
            };
            let mut sent = 0;
            for row in &rows {
                let attr = file_attr(&row.attr);
                let full = reply.add(
                    INodeNo(row.attr.ino),
                    row.next_offset,
                    &row.name,
                    ttl_of(&row.attr),
                    &attr,
                    Generation(0),
                );
                if full {
                    break;
                }
                // Counted only once it is sure to be sent: the kernel
                // holds what it receives, and only that.
                fs.sent_entry(ino.0, &row.name, &row.attr);
                sent += 1;
            }
            reply.ok();
            fs.unsent(&rows[sent..]);
        });
    }

    // BATCH_FORGET comes here too (fuser's default splits it).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        contained("forget", || self.fs.forget(ino.0, nlookup));
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match contained("releasedir", || self.fs.releasedir(fh.0)) {
            Some(()) => reply.ok(),
            None => reply.error(Errno::EIO),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // S3 has no capacity limit to report; show a large, empty volume so
        // tools that check free space before copying do not refuse.
        const BLOCKS: u64 = 1 << 40;
        reply.statfs(
            BLOCKS,
            BLOCKS,
            BLOCKS,
            1 << 32,
            1 << 32,
            4096,
            crate::names::NAME_MAX as u32,
            4096,
        );
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS makes the kernel stop asking for the life of the mount:
        // `ls -l` asks for the SELinux label and ACLs of every file, and
        // 40,000 round trips for an empty answer cost more than the listing.
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != REFRESH_IOCTL {
            reply.error(Errno::from_i32(libc::ENOTTY));
            return;
        }
        // The control channel of `s3mount refresh PATH`: list the directory
        // again and answer once that is done.
        self.spawn(move |fs| async move { fs.refresh(ino.0).await }, reply);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        // ENOSYS makes the kernel stop asking for the life of the mount:
        // `ls -l` lists attributes of every file, and 20,000 round trips for
        // an empty answer cost more than the listing itself.
        reply.error(Errno::ENOSYS);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            mtime: mtime.map(|t| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => std::time::SystemTime::now(),
            }),
            atime: atime.is_some(),
        };
        self.spawn(
            move |fs| async move { fs.setattr(ino.0, fh.map(|f| f.0), size, change).await },
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let name = name_str(link_name);
        let target = target.to_str().map(str::to_owned);
        let creator = creator(req, 0o777, 0);
        self.spawn(
            move |fs| async move {
                let target =
                    target.ok_or(FsError::Invalid("a symlink target that is not UTF-8"))?;
                fs.symlink(parent.0, &name?, &target, creator).await
            },
            reply,
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(
            move |fs| async move { fs.readlink(ino.0).await.map(bytes::Bytes::from) },
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_str(name);
        let creator = creator(req, mode, umask);
        self.spawn(
            move |fs| async move { fs.mkdir(parent.0, &name?, creator).await },
            reply,
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        // Devices, FIFOs and sockets have no S3 form; a regular file is a
        // plain create.
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::from_i32(libc::EPERM));
            return;
        }
        let name = name_str(name);
        let creator = Some(creator(req, mode, umask));
        self.spawn(
            move |fs| async move { fs.mknod(parent.0, &name?, creator).await },
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _new_parent: INodeNo,
        _new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        // S3 has no second name for one object. EPERM is POSIX's answer for
        // a file system without hard links: `ln` says "Operation not
        // permitted", git and rsync fall back to copying or renaming.
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_str(name);
        self.spawn(
            move |fs| async move { fs.unlink(parent.0, &name?).await },
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_str(name);
        self.spawn(
            move |fs| async move { fs.rmdir(parent.0, &name?).await },
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, new_name) = (name_str(name), name_str(new_name));
        self.spawn(
            move |fs| async move {
                fs.rename(parent.0, &name?, new_parent.0, &new_name?, flags)
                    .await
            },
            reply,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_str(name);
        let opens = self.opens.clone();
        let creator = Some(creator(req, mode, umask));
        self.spawn(
            move |fs| async move {
                let (attr, fh) = fs.create(parent.0, &name?, flags, creator).await?;
                opens.opened_ordinary(fh, attr.ino, false);
                Ok((attr, fh))
            },
            reply,
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The request buffer is reused by the next request; the write goes
        // on elsewhere, so it needs its own copy.
        let data = data.to_vec();
        self.spawn(
            move |fs| async move { fs.write(fh.0, offset, data).await },
            reply,
        );
    }
}

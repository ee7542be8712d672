//! `asme mount`: SOURCE shown through FUSE with its owners mapped (what bindfs does).
//!
//! The server is a thin translation layer: every request becomes the same system call on
//! SOURCE, made relative to a held descriptor (`node`), with uids and gids translated by the
//! map. Permission checks are the kernel's (`default_permissions`, on the mapped attributes),
//! so nobody gains access they lack on SOURCE. Where the kernel offers it and the server is
//! root, reads and writes of regular files bypass the server (FUSE passthrough).

mod attr;
mod handle;
mod listing;
pub mod map;
pub mod mount;
mod names;
mod node;
mod xattr;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno as SysErrno;

use attr::*;
use handle::*;
use listing::*;
use map::OwnerMap;
use node::{Backing, Key, Node, Table};

/// How the mount behaves, from `asme mount`'s options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub map: OwnerMap,
    /// How long the kernel may trust names and attributes it was given. Changes made through
    /// the mount are seen at once whatever this is; it only delays changes made to SOURCE
    /// directly.
    pub ttl: Duration,
    /// Use FUSE passthrough for file data when the kernel offers it (needs root).
    pub passthrough: bool,
}

/// Bit set in a file handle whose data goes through the kernel's passthrough.
const PASSTHROUGH_FH: u64 = 1 << 32;

/// The filesystem served over FUSE.
#[derive(Debug)]
pub struct MappedFs {
    settings: Settings,
    nodes: Table,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_dir: AtomicU64,
    /// Root may give created files to their creator and open backing files.
    as_root: bool,
    /// Set once, at FUSE init, when the kernel accepted passthrough.
    passthrough: bool,
}

type Result<T> = std::result::Result<T, Errno>;

fn errno(e: SysErrno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

impl MappedFs {
    /// `source` must be an `O_PATH` descriptor of a folder.
    pub fn new(source: OwnedFd, settings: Settings) -> std::io::Result<MappedFs> {
        let st = rustix::fs::fstat(&source)?;
        Ok(MappedFs {
            nodes: Table::new(source, key(&st), descriptor_budget()),
            settings,
            dirs: Mutex::new(HashMap::new()),
            next_dir: AtomicU64::new(1),
            as_root: rustix::process::geteuid().is_root(),
            passthrough: false,
        })
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>> {
        self.nodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// The node's `O_PATH` descriptor (see `node::Table::fd`).
    fn fd(&self, node: &Node) -> Result<Arc<OwnedFd>> {
        self.nodes.fd(node).map_err(Errno::from)
    }

    /// The node of `ino` and its descriptor.
    fn node_fd(&self, ino: INodeNo) -> Result<(Arc<Node>, Arc<OwnedFd>)> {
        let node = self.node(ino)?;
        let fd = self.fd(&node)?;
        Ok((node, fd))
    }

    /// Looks `name` up in `parent` and counts the kernel's reference.
    fn lookup_entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        let (_, dir) = self.node_fd(parent)?;
        let fd = open_path(&dir, name)?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        self.nodes.remember(fd, key(&st), parent.0, name);
        Ok(self.attr(&st))
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<FileAttr>) {
        match result {
            Ok(attr) => reply.entry(&self.settings.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for MappedFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_EXPORT_SUPPORT,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if self.settings.passthrough
            && self.as_root
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough = true;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_entry(parent, name) {
            // A negative entry (node id 0) the kernel may keep for the timeout: compilers,
            // interpreters and shells look up the same missing names again and again.
            // Creating the name through the mount replaces it at once.
            Err(Errno::ENOENT) => {
                let none = placeholder_attr(FileType::RegularFile);
                reply.entry(&self.settings.ttl, &none, Generation(0));
            }
            result => self.reply_entry(reply, result),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // The node's descriptor stats even an unlinked file, so the handle is not needed.
        let _ = fh;
        let result = self.node(ino).and_then(|n| self.stat_node(&n));
        self.reply_attr(reply, result);
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
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        };
        let result = self.node(ino).and_then(|n| self.set_attr(&n, change));
        self.reply_attr(reply, result);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self
            .node_fd(ino)
            .and_then(|(_, fd)| rustix::fs::readlinkat(&*fd, "", Vec::new()).map_err(errno));
        match result {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = self.make_node(req, parent, name, |dir| {
            let kind = rustix::fs::FileType::from_raw_mode(mode);
            let perm = Mode::from_raw_mode(mode & 0o7777);
            rustix::fs::mknodat(dir, name, kind, perm, decode_dev(rdev))
        });
        self.reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.make_node(req, parent, name, |dir| {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777))
        });
        self.reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.node_fd(parent).and_then(|(_, dir)| {
            self.pin_named(&dir, name);
            rustix::fs::unlinkat(&*dir, name, AtFlags::empty()).map_err(errno)
        });
        reply_empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.node_fd(parent).and_then(|(_, dir)| {
            self.pin_named(&dir, name);
            rustix::fs::unlinkat(&*dir, name, AtFlags::REMOVEDIR).map_err(errno)
        });
        reply_empty(reply, result);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.make_node(req, parent, link_name, |dir| {
            rustix::fs::symlinkat(target, dir, link_name)
        });
        self.reply_entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.rename_entry((parent, name), (newparent, newname), flags),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.reply_entry(reply, self.link_entry(ino, (newparent, newname)))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(node) => self.open_file(&node, flags.0, reply),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.read_op(fh, offset, size, reply)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.write_op(fh, offset, data, reply)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (no write-back cache; locks are the kernel's), and every close
        // would wait for this round trip: ENOSYS tells the kernel never to send FLUSH again.
        let _ = fh;
        reply.error(Errno::ENOSYS);
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
        self.release_op(ino, fh, reply)
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fd = borrow_fh(fh);
        let result = if datasync {
            rustix::fs::fdatasync(fd)
        } else {
            rustix::fs::fsync(fd)
        };
        reply_empty(reply, result.map_err(errno));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino).and_then(|n| self.open_dir_handle(&n)) {
            Ok(id) => reply.opened(FileHandle(id), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.readdir_op(fh, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.readdirplus_op(ino, fh, offset, reply)
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.dir_handle(fh).and_then(|d| {
            if datasync {
                rustix::fs::fdatasync(&d.fd)
            } else {
                rustix::fs::fsync(&d.fd)
            }
            .map_err(errno)
        });
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let result = self
            .node(ino)
            .or_else(|_| self.node(INodeNo(node::ROOT)))
            .and_then(|n| rustix::fs::fstatvfs(&*self.fd(&n)?).map_err(errno));
        match result {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.set_xattr(ino, name, value, flags))
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.get_xattr(ino, name, size))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.list_xattr(ino, size))
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove_xattr(ino, name))
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.create_op(req, parent, name, mode, flags, reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.fallocate_op(fh, offset, length, mode, reply)
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.lseek_op(fh, offset, whence, reply)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.copy_file_range_op(fh_in, offset_in, fh_out, offset_out, len, reply)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many files may hold an `O_PATH` descriptor at once: half the open-file limit (the other
/// half is for folders, open handles and the kernel's own), see `node`.
fn descriptor_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (limit / 2).min(1 << 20) as usize
}

fn reply_xattr(reply: ReplyXattr, result: Result<xattr::XattrValue>) {
    match result {
        Ok(xattr::XattrValue::Size(n)) => reply.size(n),
        Ok(xattr::XattrValue::Data(data)) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// The `O_PATH` descriptor a node holds: the object itself, never what a symlink names.
fn open_path(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_through_the_fuse_encoding() {
        for (major, minor) in [
            (0, 0),
            (1, 3),
            (8, 1),
            (259, 0),
            (4095, 1_048_575),
            (10, 229),
        ] {
            let dev = libc::makedev(major, minor);
            assert_eq!(decode_dev(encode_dev(dev)), dev, "{major}:{minor}");
        }
    }

    #[test]
    fn open_flags_leave_creation_to_the_server() {
        let f = open_flags(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND);
        assert!(f.contains(OFlags::RDWR | OFlags::APPEND | OFlags::CLOEXEC));
        assert!(!f.contains(OFlags::CREATE) && !f.contains(OFlags::EXCL));
    }

    #[test]
    fn times_before_the_epoch_survive() {
        // -1.25 s is the kernel's (-2, 750_000_000); fuser hands it over as epoch - 2.75 s.
        let from_fuser = UNIX_EPOCH - Duration::from_millis(2750);
        let ts = timespec(Some(TimeOrNow::SpecificTime(from_fuser)));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-2, 750_000_000));
        // Replies carry a true SystemTime, which fuser converts correctly.
        assert_eq!(
            time(-2, 750_000_000),
            UNIX_EPOCH - Duration::from_millis(1250)
        );
    }
}

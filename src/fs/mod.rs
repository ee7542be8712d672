//! `asme mount`: SOURCE shown through FUSE with its owners mapped (what bindfs does).
//!
//! The server is a thin translation layer: every request becomes the same system call on
//! SOURCE, made relative to a held descriptor (`node`), with uids and gids translated by the
//! map. Permission checks are the kernel's (`default_permissions`, on the mapped attributes),
//! so nobody gains access they lack on SOURCE. Where the kernel offers it and the server is
//! root, reads and writes of regular files bypass the server (FUSE passthrough).

pub mod map;
pub mod mount;
mod node;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
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

use map::IdMap;
use node::{Backing, Key, Node, Table};

/// How the mount behaves, from `asme mount`'s options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub map: IdMap,
    /// How long the kernel may trust names and attributes it was given. Changes made through
    /// the mount are seen at once whatever this is; it only delays changes made to SOURCE
    /// directly.
    pub ttl: Duration,
    /// Use FUSE passthrough for file data when the kernel offers it (needs root).
    pub passthrough: bool,
}

/// What a SETATTR asks for (ids as the mount shows them).
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    fh: Option<FileHandle>,
}

/// Bit set in a file handle whose data goes through the kernel's passthrough.
const PASSTHROUGH_FH: u64 = 1 << 32;

/// A new file handle, and the inode's passthrough state (locked until the reply is sent).
struct Served<'n> {
    fh: FileHandle,
    io: std::sync::MutexGuard<'n, node::Io>,
}

impl Served<'_> {
    fn backing(&self) -> Option<&fuser::BackingId> {
        self.io.backing.as_ref().map(|b| &b.id)
    }
}

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

/// An open directory: its descriptor and the entries read at opendir or rewind.
#[derive(Debug)]
struct DirHandle {
    fd: OwnedFd,
    /// st_dev of the folder: entries' inode numbers become node ids with it.
    dev: u64,
    entries: Mutex<Vec<DirEntry>>,
}

#[derive(Debug, Clone)]
struct DirEntry {
    name: CString,
    ino: u64,
    kind: FileType,
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

    fn attr(&self, st: &Stat) -> FileAttr {
        let map = &self.settings.map;
        FileAttr {
            ino: INodeNo(self.nodes.id_for(key(st))),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
            crtime: UNIX_EPOCH,
            kind: kind(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: map.users.to_mount(st.st_uid),
            gid: map.groups.to_mount(st.st_gid),
            rdev: encode_dev(st.st_rdev),
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn stat_node(&self, node: &Node) -> Result<FileAttr> {
        let st = rustix::fs::fstat(&*self.fd(node)?).map_err(errno)?;
        Ok(self.attr(&st))
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

    /// A new object `name` in `parent`, just made by this server: give it to its creator
    /// (mapped to SOURCE's ids) and count the kernel's reference, with `path_fd` (its `O_PATH`
    /// descriptor, opened by name) as the node. `made` is the key of what this server created,
    /// when it holds another descriptor of it: the name must still be that object.
    fn adopt(
        &self,
        req: &Request,
        parent: (INodeNo, &OwnedFd),
        name: &OsStr,
        path_fd: OwnedFd,
        made: Option<Key>,
    ) -> Result<FileAttr> {
        let st = rustix::fs::fstat(&path_fd).map_err(errno)?;
        if made.is_some_and(|made| made != key(&st)) {
            return Err(Errno::ESTALE); // replaced on SOURCE in between
        }
        let st = if self.as_root {
            self.give_to_creator(req, parent.1, path_fd.as_fd(), &st)?
        } else {
            st
        };
        self.nodes.remember(path_fd, key(&st), (parent.0).0, name);
        Ok(self.attr(&st))
    }

    /// chown to the creator's ids; a set-group-id parent keeps its group (as the kernel would
    /// have done for the creator). chown clears set-id bits the creator asked for: restore.
    fn give_to_creator(
        &self,
        req: &Request,
        parent: &OwnedFd,
        fd: BorrowedFd<'_>,
        st: &Stat,
    ) -> Result<Stat> {
        let map = &self.settings.map;
        let uid = map.users.to_source(req.uid());
        let parent_st = rustix::fs::fstat(parent).map_err(errno)?;
        let gid = if parent_st.st_mode as u32 & libc::S_ISGID != 0 {
            parent_st.st_gid
        } else {
            map.groups.to_source(req.gid())
        };
        if st.st_uid == uid && st.st_gid == gid {
            return Ok(*st);
        }
        chown_fd(fd, Some(uid), Some(gid)).map_err(errno)?;
        let mode = st.st_mode;
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            chmod_fd(fd, mode & 0o7777).map_err(errno)?;
        }
        rustix::fs::fstat(fd).map_err(errno)
    }

    fn open_dir_handle(&self, node: &Node) -> Result<u64> {
        let fd = rustix::fs::openat(
            &*self.fd(node)?,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let dev = rustix::fs::fstat(&fd).map_err(errno)?.st_dev;
        let handle = Arc::new(DirHandle {
            fd,
            dev,
            entries: Mutex::new(Vec::new()),
        });
        let id = self.next_dir.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(id, handle);
        Ok(id)
    }

    fn dir_handle(&self, fh: FileHandle) -> Result<Arc<DirHandle>> {
        lock(&self.dirs).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The folder's entries (index + 1 is each one's offset); offset 0 (opendir, rewinddir)
    /// reads the folder afresh.
    fn entries<'d>(
        &self,
        dir: &'d DirHandle,
        offset: u64,
    ) -> Result<std::sync::MutexGuard<'d, Vec<DirEntry>>> {
        let mut entries = lock(&dir.entries);
        if offset == 0 {
            *entries = read_dir(dir.fd.as_fd()).map_err(errno)?;
            // The numbers stat shows (`node`): SOURCE's, but 1 for the root.
            for e in entries.iter_mut() {
                e.ino = self.nodes.id_for((dir.dev, e.ino));
            }
        }
        Ok(entries)
    }

    /// A data descriptor for `node`, opened through its `O_PATH` descriptor.
    fn reopen(&self, node: &Node, flags: OFlags) -> Result<OwnedFd> {
        let fd = self.fd(node)?;
        rustix::fs::open(proc_path(fd.as_raw_fd()), flags, Mode::empty()).map_err(errno)
    }

    fn open_file(&self, node: &Node, flags: i32, reply: ReplyOpen) {
        let served = self
            .reopen(node, open_flags(flags))
            .and_then(|fd| self.serve(node, fd, |fd| reply.open_backing(fd)));
        match served {
            Ok(s) => match s.backing() {
                Some(id) => reply.opened_passthrough(s.fh, FopenFlags::empty(), id),
                None => reply.opened(s.fh, FopenFlags::FOPEN_KEEP_CACHE),
            },
            Err(e) => reply.error(e),
        }
    }

    /// Makes `fd` (a file of `node`, opened for the caller) a handle. With passthrough on,
    /// reads and writes bypass the server: the inode's backing id is registered from its
    /// first handle and shared by the others. The kernel opens its own backing file per FUSE
    /// file, with that file's flags, so one registration serves every access mode; and it
    /// clears set-id bits for the caller as on any write.
    fn serve<'n>(
        &self,
        node: &'n Node,
        fd: OwnedFd,
        register: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>,
    ) -> Result<Served<'n>> {
        let mut io = lock(&node.io);
        if self.passthrough {
            if io.backing.is_none() {
                let id = register(fd.as_fd()).map_err(Errno::from)?;
                io.backing = Some(Backing { id, opens: 0 });
            }
            if let Some(b) = io.backing.as_mut() {
                b.opens += 1;
            }
        }
        let passthrough = if self.passthrough { PASSTHROUGH_FH } else { 0 };
        let fh = FileHandle(fd.into_raw_fd() as u64 | passthrough);
        Ok(Served { fh, io })
    }

    fn release_backing(&self, ino: INodeNo) {
        if let Ok(node) = self.node(ino) {
            let mut io = lock(&node.io);
            if let Some(b) = io.backing.as_mut() {
                b.opens = b.opens.saturating_sub(1);
                if b.opens == 0 {
                    io.backing = None;
                }
            }
        }
    }

    fn set_attr(&self, node: &Node, change: AttrChange) -> Result<FileAttr> {
        let AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = change;
        let path_fd = self.fd(node)?;
        if let Some(mode) = mode {
            chmod_fd(path_fd.as_fd(), mode & 0o7777).map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            let map = &self.settings.map;
            let uid = uid.map(|u| map.users.to_source(u));
            let gid = gid.map(|g| map.groups.to_source(g));
            chown_fd(path_fd.as_fd(), uid, gid).map_err(errno)?;
        }
        if let Some(size) = size {
            // A handle comes only with ftruncate, so it is a file's descriptor (for a folder
            // the handle would be a `dirs` id, but folders are never truncated).
            let opened;
            let file = match fh {
                Some(fh) => borrow_fh(fh),
                None => {
                    opened = self.reopen(node, OFlags::WRONLY | OFlags::CLOEXEC)?;
                    opened.as_fd()
                }
            };
            rustix::fs::ftruncate(file, size).map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            // The magic link of the O_PATH descriptor is the object itself, symlinks included.
            rustix::fs::utimensat(
                rustix::fs::CWD,
                proc_path(path_fd.as_raw_fd()),
                &times,
                AtFlags::empty(),
            )
            .map_err(errno)?;
        }
        self.stat_node(node)
    }

    /// The known node named `name` in `dir` is losing that name: keep it reachable.
    fn pin_named(&self, dir: &OwnedFd, name: &OsStr) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Some(node) = self.nodes.by_key(key(&st))
        {
            let _ = self.nodes.pin(&node);
        }
    }

    /// The object now named `name` in `dir` was renamed there.
    fn moved(&self, dir: &OwnedFd, name: &OsStr, to: (INodeNo, &OsStr)) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Some(node) = self.nodes.by_key(key(&st))
        {
            self.nodes.renamed(&node, ((to.0).0, to.1));
        }
    }

    fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) -> Result<FileAttr> {
        let (_, dir) = self.node_fd(parent)?;
        make(dir.as_fd()).map_err(errno)?;
        let fd = open_path(&dir, name)?;
        self.adopt(req, (parent, &dir), name, fd, None)
    }

    /// getxattr/listxattr: size 0 asks for the size; otherwise the value, or ERANGE from
    /// SOURCE when it does not fit.
    fn xattr_reply(
        reply: ReplyXattr,
        size: u32,
        query: impl FnOnce() -> rustix::io::Result<usize>,
        read: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
    ) {
        if size == 0 {
            return match query() {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(errno(e)),
            };
        }
        let mut buf = vec![0u8; size as usize];
        match read(&mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
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
        match result {
            Ok(attr) => reply.attr(&self.settings.ttl, &attr),
            Err(e) => reply.error(e),
        }
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
        let result = self.node(ino).and_then(|n| {
            let change = AttrChange {
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
                fh,
            };
            self.set_attr(&n, change)
        });
        match result {
            Ok(attr) => reply.attr(&self.settings.ttl, &attr),
            Err(e) => reply.error(e),
        }
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
        let result = self.node_fd(parent).and_then(|(_, dir)| {
            let (_, new_dir) = self.node_fd(newparent)?;
            let flags = rustix::fs::RenameFlags::from_bits_retain(flags.bits());
            let exchange = flags.contains(rustix::fs::RenameFlags::EXCHANGE);
            if !exchange {
                self.pin_named(&new_dir, newname); // replaced, if it exists
            }
            rustix::fs::renameat_with(&*dir, name, &*new_dir, newname, flags).map_err(errno)?;
            // Nodes known by the names that moved learn their new ones.
            self.moved(&new_dir, newname, (newparent, newname));
            if exchange {
                self.moved(&dir, name, (parent, name));
            }
            Ok(())
        });
        reply_empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self.node_fd(ino).and_then(|(_, fd)| {
            let (_, new_dir) = self.node_fd(newparent)?;
            // Through the magic link (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
            rustix::fs::linkat(
                rustix::fs::CWD,
                proc_path(fd.as_raw_fd()),
                &*new_dir,
                newname,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(errno)?;
            self.lookup_entry(newparent, newname)
        });
        self.reply_entry(reply, result);
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
        let mut buf = vec![0u8; size as usize];
        match rustix::io::pread(borrow_fh(fh), &mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
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
        match rustix::io::pwrite(borrow_fh(fh), data, offset) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
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
        if fh.0 & PASSTHROUGH_FH != 0 {
            self.release_backing(ino);
        }
        close_raw(fh.0);
        reply.ok();
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
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.dir_handle(fh) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        let entries = match self.entries(&dir, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if reply.add(
                INodeNo(e.ino),
                next,
                e.kind,
                OsStr::from_bytes(e.name.as_bytes()),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = match self.dir_handle(fh) {
            Ok(dir) => dir,
            Err(e) => return reply.error(e),
        };
        let entries = match self.entries(&dir, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        let ttl = self.settings.ttl;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            let name = OsStr::from_bytes(e.name.as_bytes());
            if name == "." || name == ".." {
                // The kernel links no entry (and takes no reference) for these names; the
                // number is what readdir(3) shows, and glibc drops entries numbered 0.
                let attr = FileAttr {
                    ino: INodeNo(e.ino),
                    ..placeholder_attr(e.kind)
                };
                if reply.add(
                    INodeNo(e.ino),
                    next,
                    name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let attr = match self.lookup_entry(ino, name) {
                Ok(attr) => attr,
                Err(Errno::ENOENT) => continue, // gone since the folder was read
                // Any other failure must not shorten the listing silently: what was added
                // goes now, and the kernel asks again from here (or gets the error).
                Err(e) if i == offset as usize => return reply.error(e),
                Err(_) => break,
            };
            if reply.add(attr.ino, next, name, &ttl, &attr, Generation(0)) {
                // Not sent: the reference just counted is not the kernel's.
                self.nodes.forget(attr.ino.0, 1);
                break;
            }
        }
        reply.ok();
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
        let result = self.node_fd(ino).and_then(|(_, fd)| {
            let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
            rustix::fs::setxattr(proc_path(fd.as_raw_fd()), name, value, flags).map_err(errno)
        });
        reply_empty(reply, result);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let fd = match self.node_fd(ino) {
            Ok((_, fd)) => fd,
            Err(e) => return reply.error(e),
        };
        let path = proc_path(fd.as_raw_fd());
        Self::xattr_reply(
            reply,
            size,
            || rustix::fs::getxattr_query(&path, name),
            |buf| rustix::fs::getxattr(&path, name, buf),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fd = match self.node_fd(ino) {
            Ok((_, fd)) => fd,
            Err(e) => return reply.error(e),
        };
        let path = proc_path(fd.as_raw_fd());
        Self::xattr_reply(
            reply,
            size,
            || rustix::fs::listxattr_query(&path),
            |buf| rustix::fs::listxattr(&path, buf),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.node_fd(ino).and_then(|(_, fd)| {
            rustix::fs::removexattr(proc_path(fd.as_raw_fd()), name).map_err(errno)
        });
        reply_empty(reply, result);
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
        let dir = match self.node_fd(parent) {
            Ok((_, dir)) => dir,
            Err(e) => return reply.error(e),
        };
        let open = open_flags(flags) | OFlags::NOFOLLOW;
        let perm = Mode::from_raw_mode(mode & 0o7777);
        // O_EXCL tells whether this call made the file (only then is it the creator's).
        let created = rustix::fs::openat(&*dir, name, open | OFlags::CREATE | OFlags::EXCL, perm);
        let (fd, made) = match created {
            Ok(fd) => (fd, true),
            Err(SysErrno::EXIST) if flags & libc::O_EXCL == 0 => {
                match rustix::fs::openat(&*dir, name, open, Mode::empty()) {
                    Ok(fd) => (fd, false),
                    Err(e) => return reply.error(errno(e)),
                }
            }
            Err(e) => return reply.error(errno(e)),
        };
        let attr = if made {
            rustix::fs::fstat(&fd).map_err(errno).and_then(|st| {
                let path_fd = open_path(&dir, name)?;
                self.adopt(req, (parent, &dir), name, path_fd, Some(key(&st)))
            })
        } else {
            self.lookup_entry(parent, name)
        };
        let attr = match attr {
            Ok(attr) => attr,
            Err(e) => return reply.error(e),
        };
        let node = match self.node(attr.ino) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        let ttl = &self.settings.ttl;
        match self.serve(&node, fd, |fd| reply.open_backing(fd)) {
            Ok(s) => match s.backing() {
                Some(id) => reply.created_passthrough(
                    ttl,
                    &attr,
                    Generation(0),
                    s.fh,
                    FopenFlags::empty(),
                    id,
                ),
                None => reply.created(ttl, &attr, Generation(0), s.fh, FopenFlags::empty()),
            },
            Err(e) => {
                self.nodes.forget(attr.ino.0, 1); // the lookup the kernel will not hold
                reply.error(e);
            }
        }
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
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
        let result = rustix::fs::fallocate(borrow_fh(fh), flags, offset, length).map_err(errno);
        reply_empty(reply, result);
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
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset as u64),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset as u64),
            libc::SEEK_SET => rustix::fs::SeekFrom::Start(offset as u64),
            libc::SEEK_CUR => rustix::fs::SeekFrom::Current(offset),
            libc::SEEK_END => rustix::fs::SeekFrom::End(offset),
            _ => return reply.error(Errno::EINVAL),
        };
        match rustix::fs::seek(borrow_fh(fh), pos) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(e)),
        }
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
        let (mut off_in, mut off_out) = (offset_in, offset_out);
        let len = len.min(u64::from(u32::MAX)) as usize;
        match rustix::fs::copy_file_range(
            borrow_fh(fh_in),
            Some(&mut off_in),
            borrow_fh(fh_out),
            Some(&mut off_out),
            len,
        ) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
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

fn key(st: &Stat) -> Key {
    (st.st_dev, st.st_ino)
}

fn reply_empty(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// A file handle is the descriptor number the server opened (plus a flag bit).
fn borrow_fh(fh: FileHandle) -> BorrowedFd<'static> {
    let raw = (fh.0 & !PASSTHROUGH_FH) as RawFd;
    // SAFETY: the kernel only sends handles this server returned from open/create, and each
    // stays open until its release, which is the last request that names it.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

fn close_raw(fh: u64) {
    let raw = (fh & !PASSTHROUGH_FH) as RawFd;
    // SAFETY: called once per handle, at release (or when an open is abandoned): the
    // descriptor is ours and nothing uses it after this.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
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

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> rustix::io::Result<()> {
    let (uid, gid) = (
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
    );
    rustix::fs::chownat(
        fd,
        "",
        uid,
        gid,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// chmod of the object behind an `O_PATH` descriptor (fchmod refuses those).
fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> rustix::io::Result<()> {
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc_path(fd.as_raw_fd()),
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )
}

/// Flags for opening SOURCE's file as the caller asked; creation is the server's business.
fn open_flags(flags: i32) -> OFlags {
    // O_DIRECT: the server's buffers are not aligned for it, and passthrough opens its own
    // backing file with the caller's flags anyway.
    let strip = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_DIRECT;
    OFlags::from_bits_retain((flags & !strip) as u32) | OFlags::CLOEXEC
}

fn read_dir(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<DirEntry>> {
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    dir.rewind();
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        out.push(DirEntry {
            name: entry.file_name().to_owned(),
            ino: entry.ino(),
            kind: dirent_kind(entry.file_type()),
        });
    }
    Ok(out)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as _,
            },
            // fuser 0.18 turns the kernel's (-2 s, +0.75 s) into epoch - 2.75 s (its
            // `system_time_from_time` subtracts the nanoseconds): undo exactly that.
            Err(before) => {
                let d = before.duration();
                Timespec {
                    tv_sec: -(d.as_secs() as i64),
                    tv_nsec: d.subsec_nanos() as _,
                }
            }
        },
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dirent_kind(t: rustix::fs::FileType) -> FileType {
    use rustix::fs::FileType as T;
    match t {
        T::Directory => FileType::Directory,
        T::Symlink => FileType::Symlink,
        T::CharacterDevice => FileType::CharDevice,
        T::BlockDevice => FileType::BlockDevice,
        T::Fifo => FileType::NamedPipe,
        T::Socket => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn placeholder_attr(kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The kernel's `new_encode_dev`: FUSE carries device numbers in 32 bits this way.
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The kernel's `new_decode_dev`.
fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    libc::makedev(major, minor)
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

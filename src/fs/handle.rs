//! Open files: OPEN and CREATE, the handles the kernel gets (descriptors, with FUSE
//! passthrough where the kernel and root allow it), and the data operations on them.
//!
//! The `*_op` methods take the request's own arguments, as fuser's `Filesystem` trait
//! gives them (the trait methods in `mod.rs` only hand them on).
#![allow(clippy::too_many_arguments)]

#[allow(unused_imports)]
use super::*;

/// A new file handle, and the inode's passthrough state (locked until the reply is sent).
pub(super) struct Served<'n> {
    fh: FileHandle,
    io: std::sync::MutexGuard<'n, node::Io>,
}

impl Served<'_> {
    pub(super) fn backing(&self) -> Option<&fuser::BackingId> {
        self.io.backing.as_ref().map(|b| &b.id)
    }
}

/// A file handle is the descriptor number the server opened (plus a flag bit).
pub(super) fn borrow_fh(fh: FileHandle) -> BorrowedFd<'static> {
    let raw = (fh.0 & !PASSTHROUGH_FH) as RawFd;
    crate::sys::fd::handed_out(raw)
}

pub(super) fn close_raw(fh: u64) {
    let raw = (fh & !PASSTHROUGH_FH) as RawFd;
    crate::sys::fd::close_handed_out(raw);
}

/// Flags for opening SOURCE's file as the caller asked; creation is the server's business.
pub(super) fn open_flags(flags: i32) -> OFlags {
    // O_DIRECT: the server's buffers are not aligned for it, and passthrough opens its own
    // backing file with the caller's flags anyway.
    let strip = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_DIRECT;
    OFlags::from_bits_retain((flags & !strip) as u32) | OFlags::CLOEXEC
}

impl MappedFs {
    /// A data descriptor for `node`, opened through its `O_PATH` descriptor.
    pub(super) fn reopen(&self, node: &Node, flags: OFlags) -> Result<OwnedFd> {
        let fd = self.fd(node)?;
        rustix::fs::open(proc_path(fd.as_raw_fd()), flags, Mode::empty()).map_err(errno)
    }

    pub(super) fn open_file(&self, node: &Node, flags: i32, reply: ReplyOpen) {
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
    pub(super) fn serve<'n>(
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
        let fh = FileHandle(crate::sys::fd::hand_out(fd) as u64 | passthrough);
        Ok(Served { fh, io })
    }

    pub(super) fn release_backing(&self, ino: INodeNo) {
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

    pub(super) fn create_op(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
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

    pub(super) fn read_op(&self, fh: FileHandle, offset: u64, size: u32, reply: ReplyData) {
        let mut buf = vec![0u8; size as usize];
        match rustix::io::pread(borrow_fh(fh), &mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    pub(super) fn write_op(&self, fh: FileHandle, offset: u64, data: &[u8], reply: ReplyWrite) {
        match rustix::io::pwrite(borrow_fh(fh), data, offset) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    pub(super) fn release_op(&self, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        if fh.0 & PASSTHROUGH_FH != 0 {
            self.release_backing(ino);
        }
        close_raw(fh.0);
        reply.ok();
    }

    pub(super) fn fallocate_op(
        &self,
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

    pub(super) fn lseek_op(&self, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
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

    pub(super) fn copy_file_range_op(
        &self,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
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

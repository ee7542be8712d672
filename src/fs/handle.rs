//! Open files: OPEN and CREATE make a handle, READ, WRITE and the other data requests use it,
//! RELEASE closes it.
//!
//! A handle is the descriptor number itself (`sys::fd` turns it back into a descriptor), with
//! one bit saying whether the kernel reads and writes the file directly (FUSE passthrough);
//! an inode's backing id is registered by its first passthrough handle and dropped with its
//! last. Which object is opened is `names`'s business; attributes are `attr`'s.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::MutexGuard;

use fuser::{Errno, FileAttr, FileHandle, FopenFlags, INodeNo};
use rustix::fs::{Mode, OFlags, SeekFrom};
use rustix::io::Errno as SysErrno;

use super::node::{self, Backing, Node};
use super::{Caller, MappedFs, Result, errno, key, lock, open_path, proc_path};
use crate::sys::fd::{borrow_raw_fd, close_raw_fd};
use crate::sys::fuse::BackingFile;

/// Bit set in a file handle whose data goes through the kernel's passthrough.
const PASSTHROUGH_FH: u64 = 1 << 32;

/// An opened file as the reply gives it: the handle, the FOPEN flags and, with passthrough,
/// the inode's backing file.
pub(super) struct Opened<'n> {
    pub fh: FileHandle,
    pub flags: FopenFlags,
    /// The inode's passthrough state, locked until the reply is sent: its backing file is
    /// the one the reply names.
    io: MutexGuard<'n, node::Io>,
}

impl Opened<'_> {
    pub fn backing(&self) -> Option<&BackingFile> {
        self.io.backing.as_ref().map(|b| &b.file)
    }
}

impl MappedFs {
    /// A data descriptor for `node`, opened through its `O_PATH` descriptor.
    pub(super) fn reopen(&self, node: &Node, flags: OFlags) -> Result<OwnedFd> {
        let fd = self.fd(node)?;
        rustix::fs::open(proc_path(fd.as_raw_fd()), flags, Mode::empty()).map_err(errno)
    }

    /// OPEN: `send` gets the handle (or the error) while the inode's passthrough state is
    /// held.
    pub(super) fn open_file(&self, node: &Node, flags: i32, send: impl FnOnce(Result<Opened<'_>>)) {
        let served = self
            .reopen(node, open_flags(flags))
            .and_then(|fd| self.serve(node, fd));
        send(served.map(|mut o| {
            if o.backing().is_none() {
                o.flags = FopenFlags::FOPEN_KEEP_CACHE;
            }
            o
        }));
    }

    /// CREATE: open `name` in `parent`, made for the caller if it is not there; `send` gets
    /// its attributes and handle as `open_file`'s does.
    pub(super) fn create_file(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        (mode, flags): (u32, i32),
        send: impl FnOnce(Result<(FileAttr, Opened<'_>)>),
    ) {
        let opened = self
            .node_fd(parent)
            .and_then(|(_, dir)| self.create_at(caller, (parent, &dir), name, mode, flags));
        let (fd, attr) = match opened {
            Ok(opened) => opened,
            Err(e) => return send(Err(e)),
        };
        let node = match self.node(attr.ino) {
            Ok(node) => node,
            Err(e) => return send(Err(e)),
        };
        match self.serve(&node, fd) {
            Ok(o) => send(Ok((attr, o))),
            Err(e) => {
                self.nodes.forget(attr.ino.0, 1); // the lookup the kernel will not hold
                send(Err(e));
            }
        }
    }

    /// The file `name` in `parent`, opened with the caller's `flags` (created with `mode` if
    /// need be), and its attributes, the kernel's reference counted.
    fn create_at(
        &self,
        caller: Caller,
        parent: (INodeNo, &OwnedFd),
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(OwnedFd, FileAttr)> {
        if self.hidden(parent.0, name) {
            return Err(fuser::Errno::EACCES);
        }
        let dir = parent.1;
        let open = open_flags(flags) | OFlags::NOFOLLOW;
        let perm = Mode::from_raw_mode(mode & 0o7777);
        // O_EXCL tells whether this call made the file (only then is it the creator's).
        let created = rustix::fs::openat(dir, name, open | OFlags::CREATE | OFlags::EXCL, perm);
        let (fd, made) = match created {
            Ok(fd) => (fd, true),
            Err(SysErrno::EXIST) if flags & libc::O_EXCL == 0 => {
                let fd = rustix::fs::openat(dir, name, open, Mode::empty()).map_err(errno)?;
                (fd, false)
            }
            Err(e) => return Err(errno(e)),
        };
        let attr = if made {
            let st = rustix::fs::fstat(&fd).map_err(errno)?;
            let path_fd = open_path(dir, name)?;
            self.adopt(caller, parent, name, path_fd, Some(key(&st)))?
        } else {
            self.lookup_entry(parent.0, name)?
        };
        Ok((fd, attr))
    }

    /// Makes `fd` (a file of `node`, opened for the caller) a handle. With passthrough on,
    /// reads and writes bypass the server: the inode's backing file is registered from its
    /// first handle and shared by the others. The kernel opens its own backing file per FUSE
    /// file, with that file's flags, so one registration serves every access mode; and it
    /// clears set-id bits for the caller as on any write.
    fn serve<'n>(&self, node: &'n Node, fd: OwnedFd) -> Result<Opened<'n>> {
        let mut io = lock(&node.io);
        let device = self.device.get().filter(|_| self.passthrough());
        if let Some(device) = device {
            if io.backing.is_none() {
                let file = BackingFile::open(device, fd.as_fd()).map_err(Errno::from)?;
                io.backing = Some(Backing { file, opens: 0 });
            }
            if let Some(b) = io.backing.as_mut() {
                b.opens += 1;
            }
        }
        let passthrough = if device.is_some() { PASSTHROUGH_FH } else { 0 };
        let fh = FileHandle(fd.into_raw_fd() as u64 | passthrough);
        Ok(Opened {
            fh,
            flags: FopenFlags::empty(),
            io,
        })
    }

    /// RELEASE: the last request on `fh`.
    pub(super) fn release_file(&self, ino: INodeNo, fh: FileHandle) {
        if fh.0 & PASSTHROUGH_FH != 0 {
            self.release_backing(ino);
        }
        close_raw_fd(raw_fd(fh));
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
}

fn raw_fd(fh: FileHandle) -> RawFd {
    (fh.0 & !PASSTHROUGH_FH) as RawFd
}

/// The descriptor of a file handle. The kernel only sends handles this server returned from
/// open or create, and each stays open until its release, the last request that names it:
/// the contract of `borrow_raw_fd`.
pub(super) fn file(fh: FileHandle) -> BorrowedFd<'static> {
    borrow_raw_fd(raw_fd(fh))
}

pub(super) fn read(fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let n = rustix::io::pread(file(fh), &mut buf, offset).map_err(errno)?;
    buf.truncate(n);
    Ok(buf)
}

pub(super) fn write(fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32> {
    let n = rustix::io::pwrite(file(fh), data, offset).map_err(errno)?;
    Ok(n as u32)
}

pub(super) fn fsync(fh: FileHandle, datasync: bool) -> Result<()> {
    let fd = file(fh);
    if datasync {
        rustix::fs::fdatasync(fd)
    } else {
        rustix::fs::fsync(fd)
    }
    .map_err(errno)
}

pub(super) fn fallocate(fh: FileHandle, offset: u64, length: u64, mode: i32) -> Result<()> {
    let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
    rustix::fs::fallocate(file(fh), flags, offset, length).map_err(errno)
}

pub(super) fn lseek(fh: FileHandle, offset: i64, whence: i32) -> Result<i64> {
    let pos = match whence {
        libc::SEEK_DATA => SeekFrom::Data(offset as u64),
        libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
        libc::SEEK_SET => SeekFrom::Start(offset as u64),
        libc::SEEK_CUR => SeekFrom::Current(offset),
        libc::SEEK_END => SeekFrom::End(offset),
        _ => return Err(Errno::EINVAL),
    };
    let at = rustix::fs::seek(file(fh), pos).map_err(errno)?;
    Ok(at as i64)
}

/// COPY_FILE_RANGE from (handle, offset) to (handle, offset).
pub(super) fn copy_file_range(
    from: (FileHandle, u64),
    to: (FileHandle, u64),
    len: u64,
) -> Result<u32> {
    let (mut off_in, mut off_out) = (from.1, to.1);
    let len = len.min(u64::from(u32::MAX)) as usize;
    let n = rustix::fs::copy_file_range(
        file(from.0),
        Some(&mut off_in),
        file(to.0),
        Some(&mut off_out),
        len,
    )
    .map_err(errno)?;
    Ok(n as u32)
}

/// Flags for opening SOURCE's file as the caller asked; creation is the server's business.
fn open_flags(flags: i32) -> OFlags {
    // O_DIRECT: the server's buffers are not aligned for it, and passthrough opens its own
    // backing file with the caller's flags anyway.
    let strip = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW | libc::O_DIRECT;
    OFlags::from_bits_retain((flags & !strip) as u32) | OFlags::CLOEXEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_leave_creation_to_the_server() {
        let f = open_flags(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND);
        assert!(f.contains(OFlags::RDWR | OFlags::APPEND | OFlags::CLOEXEC));
        assert!(!f.contains(OFlags::CREATE) && !f.contains(OFlags::EXCL));
    }
}

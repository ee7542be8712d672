//! FUSE over io_uring: the requests of each CPU served by a thread of its own.
//!
//! fuser's loop reads `/dev/fuse`, two syscalls and, on an idle server, a wake-up on another
//! CPU per request. Where the fuse module allows it (`enable_uring`, Linux 6.14+) and the
//! kernel agreed at INIT, `start` registers a queue per CPU (`sys::uring`): a request is then
//! put in its requester's CPU's queue, and the reply and the fetch of the next request are
//! one submission. fuser keeps the session: it mounted, answered INIT, still reads
//! `/dev/fuse` for what the kernel sends there even with the ring (FORGET, INTERRUPT, and
//! anything sent before every queue was registered), and its notifier sends invalidations.
//!
//! Each request becomes the same call on `MappedFs` that `server` makes for fuser; `wire`
//! reads its arguments and writes the reply.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileHandle, INodeNo, TimeOrNow};
use rustix::fs::{AtFlags, RenameFlags, StatVfs};

use super::attr::{AttrChange, Xattr};
use super::wire::{self, Args, DirBuf, Out};
use super::{Caller, MappedFs, Result, handle};
use crate::sys::uring::{self, FuseQueue};

/// Each entry's payload buffer: at least the connection's max_write, which INIT sets to
/// this when the ring is agreed.
pub(super) const PAYLOAD_LEN: usize = 1 << 20;
/// Entries per CPU's queue: requests that may wait for its thread in the kernel's entries.
const DEPTH: u16 = 4;

/// Starts a thread per CPU that registers that CPU's queue on `dev` and serves it. The ring
/// takes over once every queue has an entry; if the kernel refuses one (the error returned),
/// requests stay on `/dev/fuse`, which fuser serves.
pub fn start(fs: Arc<MappedFs>, dev: Arc<OwnedFd>) -> io::Result<()> {
    let count = uring::queue_count()?;
    let (registered, results) = std::sync::mpsc::channel();
    for cpu in 0..count {
        let (fs, dev, registered) = (fs.clone(), dev.clone(), registered.clone());
        std::thread::Builder::new()
            .name(format!("asme-ring-{cpu}"))
            .spawn(move || {
                // The kernel queues a request on its requester's CPU: serving it there keeps
                // both on one CPU's caches. Best effort (a CPU may be offline or outside our
                // affinity).
                let mut set = rustix::thread::CpuSet::new();
                set.set(cpu as usize);
                let _ = rustix::thread::sched_setaffinity(None, &set);
                // Made in its thread: a ring takes submissions from one thread only.
                let mut ready = Vec::new();
                let queue = FuseQueue::register(dev, cpu, DEPTH, PAYLOAD_LEN)
                    .and_then(|mut q| q.completed(&mut ready).map(|()| q));
                match queue {
                    Ok(queue) => {
                        let _ = registered.send(Ok(()));
                        drop(registered);
                        serve_queue(&fs, queue, cpu, ready);
                    }
                    Err(e) => {
                        let _ = registered.send(Err(e));
                    }
                }
            })?;
    }
    drop(registered);
    results.iter().take(count as usize).collect()
}

/// Serves a registered queue until the connection ends. Any other failure ends the server:
/// requests already queued on this CPU could never be answered, and a mount whose server is
/// gone fails its callers (ENOTCONN) where one with a dead queue would hang them.
fn serve_queue(fs: &MappedFs, mut queue: FuseQueue, cpu: u16, mut ready: Vec<usize>) {
    loop {
        for &i in &ready {
            if let Err(e) = serve(fs, &mut queue, i) {
                fail(cpu, &e);
            }
        }
        if let Err(e) = queue.poll(&mut ready, fs.settings.poll) {
            // ENOTCONN and ENODEV: the mount is gone, the normal end.
            if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ENODEV)) {
                return;
            }
            fail(cpu, &e);
        }
    }
}

fn fail(cpu: u16, e: &io::Error) -> ! {
    eprintln!("asme mount: io_uring queue {cpu}: {e}; stopping the server");
    std::process::exit(1);
}

/// `enum fuse_opcode` (the ones with a reply; FORGET and INTERRUPT stay on /dev/fuse).
mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// `fuse_setattr_in.valid` bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;

/// A reply's arguments, owned: the request's buffer is also the reply's.
enum Reply {
    Empty,
    Entry(Duration, FileAttr),
    Attr(Duration, FileAttr),
    Data(Vec<u8>),
    Written(u32),
    XattrSize(u32),
    Offset(i64),
    Statfs(StatVfs),
    Opened(FileHandle),
}

impl Reply {
    fn write(&self, buf: &mut [u8]) -> Option<usize> {
        let mut out = Out::new(buf);
        match self {
            Reply::Empty => {}
            Reply::Entry(ttl, a) => wire::entry(&mut out, *ttl, a),
            Reply::Attr(ttl, a) => wire::attr_out(&mut out, *ttl, a),
            Reply::Data(data) => {
                out.bytes(data);
            }
            Reply::Written(n) | Reply::XattrSize(n) => {
                out.u32(*n).u32(0);
            }
            Reply::Offset(at) => {
                out.u64(*at as u64);
            }
            Reply::Statfs(s) => {
                out.u64(s.f_blocks).u64(s.f_bfree).u64(s.f_bavail);
                out.u64(s.f_files).u64(s.f_ffree);
                out.u32(s.f_bsize as u32)
                    .u32(s.f_namemax as u32)
                    .u32(s.f_frsize as u32);
                out.bytes(&[0; 28]); // padding and spare[6]
            }
            Reply::Opened(fh) => wire::open_out(&mut out, fh.0, 0, None),
        }
        out.finish()
    }
}

/// Serves the request in entry `i` and queues its reply.
fn serve(fs: &MappedFs, queue: &mut FuseQueue, i: usize) -> io::Result<()> {
    // `struct fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, ...
    let (opcode, ino, caller) = {
        let h = Args {
            op: queue.request(i).in_header,
            payload: &[],
        };
        let caller = Caller {
            uid: h.u32(24),
            gid: h.u32(28),
        };
        (h.u32(4), INodeNo(h.u64(16)), caller)
    };
    match opcode {
        op::OPEN => return open(fs, queue, i, ino),
        op::CREATE => return create(fs, queue, i, ino, caller),
        _ => {}
    }
    let reply = {
        let r = queue.request(i);
        let args = Args {
            op: r.op_in,
            payload: r.payload,
        };
        answer(fs, opcode, ino, caller, args)
    };
    match reply {
        Ok(reply) => queue.reply(i, 0, |buf| reply.write(buf)),
        Err(e) => reply_error(queue, i, e),
    }
}

fn answer(fs: &MappedFs, opcode: u32, ino: INodeNo, caller: Caller, a: Args<'_>) -> Result<Reply> {
    let fh = || FileHandle(a.u64(0));
    let name = || a.name().map(|(n, _)| n).ok_or(Errno::EINVAL);
    let entry = |attr: Result<FileAttr>| Ok(Reply::Entry(fs.ttl(), attr?));
    match opcode {
        op::LOOKUP => entry(fs.lookup_or_negative(ino, name()?)),
        op::GETATTR => Ok(Reply::Attr(fs.ttl(), fs.stat_node(&*fs.node(ino)?)?)),
        op::SETATTR => {
            let attr = fs.set_attr(&*fs.node(ino)?, attr_change(a))?;
            Ok(Reply::Attr(fs.ttl(), attr))
        }
        op::READLINK => Ok(Reply::Data(fs.readlink_of(ino)?)),
        op::SYMLINK => {
            let (link, target) = a.two_names().ok_or(Errno::EINVAL)?;
            entry(fs.symlink_at(caller, ino, link, Path::new(target)))
        }
        op::MKNOD => entry(fs.mknod_at(caller, ino, name()?, a.u32(0), a.u32(4))),
        op::MKDIR => entry(fs.mkdir_at(caller, ino, name()?, a.u32(0))),
        op::UNLINK => empty(fs.unlink_at(ino, name()?, AtFlags::empty())),
        op::RMDIR => empty(fs.unlink_at(ino, name()?, AtFlags::REMOVEDIR)),
        op::RENAME | op::RENAME2 => {
            let flags = if opcode == op::RENAME2 { a.u32(8) } else { 0 };
            let (from, to) = a.two_names().ok_or(Errno::EINVAL)?;
            let flags = RenameFlags::from_bits_retain(flags);
            empty(fs.rename_at((ino, from), (INodeNo(a.u64(0)), to), flags))
        }
        op::LINK => entry(fs.link_at(INodeNo(a.u64(0)), ino, name()?)),
        op::READ => Ok(Reply::Data(handle::read(fh(), a.u64(8), a.u32(16))?)),
        op::WRITE => {
            let data = a.payload.get(..a.u32(16) as usize).ok_or(Errno::EINVAL)?;
            Ok(Reply::Written(handle::write(fh(), a.u64(8), data)?))
        }
        op::STATFS => Ok(Reply::Statfs(fs.stat_fs(ino)?)),
        op::RELEASE => {
            fs.release_file(ino, fh());
            Ok(Reply::Empty)
        }
        op::FSYNC => empty(handle::fsync(fh(), a.u32(8) & 1 != 0)),
        op::SETXATTR => {
            let (name, value) = a.name().ok_or(Errno::EINVAL)?;
            let value = value.get(..a.u32(0) as usize).ok_or(Errno::EINVAL)?;
            empty(fs.set_xattr(ino, name, value, a.u32(4) as i32))
        }
        op::GETXATTR => xattr(fs.get_xattr(ino, name()?, a.u32(0))),
        op::LISTXATTR => xattr(fs.list_xattr(ino, a.u32(0))),
        op::REMOVEXATTR => empty(fs.remove_xattr(ino, name()?)),
        op::OPENDIR => Ok(Reply::Opened(fs.open_dir(&*fs.node(ino)?)?)),
        op::READDIR => {
            let mut dir = DirBuf::new(a.u32(16) as usize);
            fs.list(fh(), a.u64(8), &mut dir)?;
            Ok(Reply::Data(dir.data))
        }
        op::READDIRPLUS => {
            let mut dir = DirBuf::new(a.u32(16) as usize);
            fs.list_plus(ino, fh(), a.u64(8), &mut dir)?;
            Ok(Reply::Data(dir.data))
        }
        op::RELEASEDIR => {
            fs.release_dir(fh());
            Ok(Reply::Empty)
        }
        op::FSYNCDIR => empty(fs.sync_dir(fh(), a.u32(8) & 1 != 0)),
        op::FALLOCATE => empty(handle::fallocate(
            fh(),
            a.u64(8),
            a.u64(16),
            a.u32(24) as i32,
        )),
        op::LSEEK => Ok(Reply::Offset(handle::lseek(
            fh(),
            a.u64(8) as i64,
            a.u32(16) as i32,
        )?)),
        op::COPY_FILE_RANGE => {
            let from = (fh(), a.u64(8));
            let to = (FileHandle(a.u64(24)), a.u64(32));
            Ok(Reply::Written(handle::copy_file_range(
                from,
                to,
                a.u64(40),
            )?))
        }
        op::DESTROY => Ok(Reply::Empty),
        // FLUSH declined for good, as `server` does; the rest this filesystem does not
        // implement (fuser answers them ENOSYS too).
        _ => Err(Errno::ENOSYS),
    }
}

fn empty(result: Result<()>) -> Result<Reply> {
    result.map(|()| Reply::Empty)
}

fn xattr(result: Result<Xattr>) -> Result<Reply> {
    Ok(match result? {
        Xattr::Size(n) => Reply::XattrSize(n),
        Xattr::Data(data) => Reply::Data(data),
    })
}

/// `struct fuse_setattr_in` as `set_attr` takes it.
fn attr_change(a: Args<'_>) -> AttrChange {
    let valid = a.u32(0);
    let has = |bit: u32| valid & bit != 0;
    let time = |secs_at: usize, nsec_at: usize, now: u32| {
        if has(now) {
            TimeOrNow::Now
        } else {
            let (secs, nsec) = (a.u64(secs_at) as i64, a.u32(nsec_at));
            // As fuser decodes it (`attr::timespec` undoes exactly this): before the epoch,
            // the nanoseconds are subtracted too.
            TimeOrNow::SpecificTime(if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nsec)
            } else {
                UNIX_EPOCH - Duration::new(secs.unsigned_abs(), nsec)
            })
        }
    };
    AttrChange {
        mode: has(FATTR_MODE).then(|| a.u32(68)),
        uid: has(FATTR_UID).then(|| a.u32(76)),
        gid: has(FATTR_GID).then(|| a.u32(80)),
        size: has(FATTR_SIZE).then(|| a.u64(16)),
        atime: has(FATTR_ATIME).then(|| time(32, 56, FATTR_ATIME_NOW)),
        mtime: has(FATTR_MTIME).then(|| time(40, 60, FATTR_MTIME_NOW)),
        fh: has(FATTR_FH).then(|| FileHandle(a.u64(8))),
    }
}

/// OPEN, answered while the inode's passthrough state is held (see `handle::Opened`), so
/// the reply is submitted at once.
fn open(fs: &MappedFs, queue: &mut FuseQueue, i: usize, ino: INodeNo) -> io::Result<()> {
    let flags = Args {
        op: queue.request(i).op_in,
        payload: &[],
    }
    .u32(0) as i32;
    let node = match fs.node(ino) {
        Ok(node) => node,
        Err(e) => return reply_error(queue, i, e),
    };
    let mut sent = Ok(());
    fs.open_file(&node, flags, |opened| {
        sent = send_opened(queue, i, opened.map(|o| (None, o)), fs.ttl());
    });
    sent
}

/// CREATE: `fuse_create_in` and the name; the reply is an entry and an open file.
fn create(
    fs: &MappedFs,
    queue: &mut FuseQueue,
    i: usize,
    parent: INodeNo,
    caller: Caller,
) -> io::Result<()> {
    let (flags, mode, name) = {
        let r = queue.request(i);
        let a = Args {
            op: r.op_in,
            payload: r.payload,
        };
        let name: Option<OsString> = a.name().map(|(n, _)| n.to_owned());
        (a.u32(0) as i32, a.u32(4), name)
    };
    let Some(name) = name else {
        return reply_error(queue, i, Errno::EINVAL);
    };
    let mut sent = Ok(());
    fs.create_file(caller, parent, &name, (mode, flags), |created| {
        sent = send_opened(queue, i, created.map(|(attr, o)| (Some(attr), o)), fs.ttl());
    });
    sent
}

/// The reply of OPEN, or of CREATE (with the new entry's attributes), submitted at once:
/// the inode's passthrough state is held until it is (see `handle::Opened`).
fn send_opened(
    queue: &mut FuseQueue,
    i: usize,
    opened: Result<(Option<FileAttr>, handle::Opened<'_>)>,
    ttl: Duration,
) -> io::Result<()> {
    let (entry, o) = match opened {
        Ok(opened) => opened,
        Err(e) => return reply_error(queue, i, e),
    };
    let backing = o.backing().map(|b| b.id());
    queue.reply(i, 0, |buf| {
        let mut out = Out::new(buf);
        if let Some(attr) = &entry {
            wire::entry(&mut out, ttl, attr);
        }
        wire::open_out(&mut out, o.fh.0, o.flags.bits(), backing);
        out.finish()
    })?;
    queue.flush()
}

fn reply_error(queue: &mut FuseQueue, i: usize, e: Errno) -> io::Result<()> {
    queue.reply(i, -e.code(), |_| Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `fuse_setattr_in` with `valid` and the fields it names.
    fn setattr_in(valid: u32, atime: (i64, u32), mode: u32) -> Vec<u8> {
        let mut b = vec![0u8; 88];
        b[0..4].copy_from_slice(&valid.to_ne_bytes());
        b[8..16].copy_from_slice(&42u64.to_ne_bytes()); // fh
        b[32..40].copy_from_slice(&atime.0.to_ne_bytes());
        b[56..60].copy_from_slice(&atime.1.to_ne_bytes());
        b[68..72].copy_from_slice(&mode.to_ne_bytes());
        b
    }

    #[test]
    fn setattr_takes_only_the_fields_marked_valid() {
        let op = setattr_in(FATTR_MODE | FATTR_FH, (5, 0), 0o600);
        let c = attr_change(Args {
            op: &op,
            payload: &[],
        });
        assert_eq!(c.mode, Some(0o600));
        assert_eq!(c.fh, Some(FileHandle(42)));
        assert!(c.uid.is_none() && c.gid.is_none() && c.size.is_none());
        assert!(c.atime.is_none() && c.mtime.is_none());
    }

    #[test]
    fn setattr_times_decode_as_fuser_decodes_them() {
        let op = setattr_in(FATTR_ATIME, (3, 250), 0);
        let c = attr_change(Args {
            op: &op,
            payload: &[],
        });
        assert_eq!(
            c.atime,
            Some(TimeOrNow::SpecificTime(UNIX_EPOCH + Duration::new(3, 250)))
        );
        // Before the epoch fuser subtracts the nanoseconds too; attr::timespec undoes that.
        let op = setattr_in(FATTR_ATIME, (-2, 250), 0);
        let c = attr_change(Args {
            op: &op,
            payload: &[],
        });
        assert_eq!(
            c.atime,
            Some(TimeOrNow::SpecificTime(UNIX_EPOCH - Duration::new(2, 250)))
        );
        let op = setattr_in(FATTR_ATIME | FATTR_ATIME_NOW, (9, 9), 0);
        let c = attr_change(Args {
            op: &op,
            payload: &[],
        });
        assert_eq!(c.atime, Some(TimeOrNow::Now));
    }

    #[test]
    fn fixed_size_replies_have_the_kernels_sizes() {
        let mut buf = [0u8; 256];
        let statfs = Reply::Statfs(rustix::fs::statvfs("/").unwrap());
        assert_eq!(statfs.write(&mut buf), Some(80)); // fuse_statfs_out
        assert_eq!(Reply::Written(3).write(&mut buf), Some(8)); // fuse_write_out
        assert_eq!(Reply::Offset(7).write(&mut buf), Some(8)); // fuse_lseek_out
        assert_eq!(Reply::Opened(FileHandle(1)).write(&mut buf), Some(16)); // fuse_open_out
        assert_eq!(Reply::Empty.write(&mut buf), Some(0));
    }
}

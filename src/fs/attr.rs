//! Attributes: SOURCE's stat shown as FUSE's `FileAttr` (owners mapped, times and device
//! numbers converted), SETATTR, the owner of what the server creates, statfs and extended
//! attributes.
//!
//! Every change goes through the node's `O_PATH` descriptor or its /proc magic link, never a
//! path; which object a name means is `names`'s business, open handles are `handle`'s.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileHandle, FileType, INodeNo, TimeOrNow};
use rustix::fs::{AtFlags, Mode, OFlags, Stat, StatVfs, Timespec, Timestamps};

use super::node::{self, Node};
use super::owners::{self, Recorded};
use super::{Caller, MappedFs, Result, errno, handle, key, proc_path};

/// Where an object is, for recorded owners kept by path (`owners::Sidecar`): a known node,
/// or a name in a known folder.
#[derive(Clone, Copy)]
pub(super) enum At<'a> {
    Node(u64),
    Child(u64, &'a OsStr),
}

/// What a SETATTR asks for (ids as the mount shows them).
pub(super) struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<FileHandle>,
}

/// An extended attribute's answer: its size when the caller asked for that (size 0), else the
/// value or list itself.
pub(super) enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

impl MappedFs {
    /// `st` as FUSE shows it; `fd` is the object's `O_PATH` descriptor and `at` where it is
    /// (for its recorded owner).
    pub(super) fn attr(&self, st: &Stat, fd: BorrowedFd<'_>, at: At<'_>) -> FileAttr {
        self.attr_owned(st, self.shown_owner(st, fd, at))
    }

    /// The attributes of `st`, shown as owned by `(uid, gid)`.
    pub(super) fn attr_owned(&self, st: &Stat, (uid, gid): (u32, u32)) -> FileAttr {
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
            uid,
            gid,
            rdev: encode_dev(st.st_rdev),
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    pub(super) fn stat_node(&self, node: &Node) -> Result<FileAttr> {
        let fd = self.fd(node)?;
        let st = rustix::fs::fstat(&*fd).map_err(errno)?;
        let id = self.nodes.id_for(node.key);
        Ok(self.attr(&st, fd.as_fd(), At::Node(id)))
    }

    /// Where `at` is, relative to SOURCE's root.
    fn path_of(&self, at: At<'_>) -> Option<std::path::PathBuf> {
        match at {
            At::Node(id) => self.nodes.path(id),
            At::Child(parent, name) => Some(self.nodes.path(parent)?.join(name)),
        }
    }

    /// The recorded owner of the object `st` (`fd`, at `at`), if any.
    fn record(&self, st: &Stat, fd: BorrowedFd<'_>, at: At<'_>) -> Option<(u32, u32)> {
        match &self.sidecar {
            Some(sidecar) => sidecar.get(&self.path_of(at)?),
            None if owners::can_record(st) => owners::read(fd),
            None => None,
        }
    }

    /// Records `owner` for the object `st` (`fd`, at `at`), or removes the record where it is
    /// `mapped`, what the map shows anyway. Objects that cannot carry a record keep none.
    fn write_record(
        &self,
        st: &Stat,
        fd: BorrowedFd<'_>,
        at: At<'_>,
        owner: (u32, u32),
        mapped: (u32, u32),
    ) -> Result<()> {
        match &self.sidecar {
            Some(sidecar) => {
                let Some(path) = self.path_of(at) else {
                    return Ok(()); // unlinked: nothing can find it by name again
                };
                let record = (owner != mapped).then_some(owner);
                sidecar
                    .set(&path, record)
                    .map_err(|e| fuser::Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO)))
            }
            None if owners::can_record(st) => owners::write(fd, owner, mapped).map_err(errno),
            None => Ok(()),
        }
    }

    /// Who the mount shows as `st`'s owner: the recorded owner where there is one, else
    /// SOURCE's owner through the map.
    fn shown_owner(&self, st: &Stat, fd: BorrowedFd<'_>, at: At<'_>) -> (u32, u32) {
        let mapped = owners::mapped(&self.settings.map, st);
        if self.settings.recorded.is_some() {
            self.record(st, fd, at).unwrap_or(mapped)
        } else {
            mapped
        }
    }

    /// With recorded owners: what the server made is stored as the owner (root's server
    /// chowns it; a user's makes everything its own anyway) and recorded as its creator's,
    /// with a set-group-id parent's shown group as the kernel would give it.
    pub(super) fn record_creator(
        &self,
        recorded: Recorded,
        caller: Caller,
        parent: (INodeNo, &OwnedFd),
        (fd, name): (BorrowedFd<'_>, &OsStr),
        st: &Stat,
    ) -> Result<Stat> {
        let (parent_ino, parent) = parent;
        let parent_st = rustix::fs::fstat(parent).map_err(errno)?;
        let inherits_group = parent_st.st_mode as u32 & libc::S_ISGID != 0;
        let mut st = *st;
        let disk_gid = if inherits_group {
            st.st_gid
        } else {
            recorded.disk.1
        };
        if self.as_root && (st.st_uid, st.st_gid) != (recorded.disk.0, disk_gid) {
            st = self.chown_keeping_set_id(fd, &st, recorded.disk.0, disk_gid)?;
        }
        let gid = if inherits_group {
            self.shown_owner(&parent_st, parent.as_fd(), At::Node(parent_ino.0))
                .1
        } else {
            caller.gid
        };
        let creator = (caller.uid, gid);
        let mapped = owners::mapped(&self.settings.map, &st);
        // A record left by an object of the same name that went behind the mount's back.
        if creator != mapped || self.sidecar.is_some() {
            self.write_record(&st, fd, At::Child(parent_ino.0, name), creator, mapped)?;
        }
        Ok(st)
    }

    /// chown to the creator's ids; a set-group-id parent keeps its group (as the kernel would
    /// have done for the creator). chown clears set-id bits the creator asked for: restore.
    pub(super) fn give_to_creator(
        &self,
        caller: Caller,
        parent: &OwnedFd,
        fd: BorrowedFd<'_>,
        st: &Stat,
    ) -> Result<Stat> {
        let map = &self.settings.map;
        let uid = map.users.to_source(caller.uid);
        let parent_st = rustix::fs::fstat(parent).map_err(errno)?;
        let gid = if parent_st.st_mode as u32 & libc::S_ISGID != 0 {
            parent_st.st_gid
        } else {
            map.groups.to_source(caller.gid)
        };
        if st.st_uid == uid && st.st_gid == gid {
            return Ok(*st);
        }
        self.chown_keeping_set_id(fd, st, uid, gid)
    }

    /// chown of a new object; chown clears set-id bits its creator asked for: restore them.
    fn chown_keeping_set_id(
        &self,
        fd: BorrowedFd<'_>,
        st: &Stat,
        uid: u32,
        gid: u32,
    ) -> Result<Stat> {
        chown_fd(fd, Some(uid), Some(gid)).map_err(errno)?;
        let mode = st.st_mode;
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            chmod_fd(fd, mode & 0o7777).map_err(errno)?;
        }
        rustix::fs::fstat(fd).map_err(errno)
    }

    pub(super) fn set_attr(&self, node: &Node, change: AttrChange) -> Result<FileAttr> {
        let path_fd = self.fd(node)?;
        let at = At::Node(self.nodes.id_for(node.key));
        if let Some(mode) = change.mode {
            chmod_fd(path_fd.as_fd(), mode & 0o7777).map_err(errno)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            if self.settings.recorded.is_some() {
                self.record_chown(path_fd.as_fd(), at, change.uid, change.gid)?;
            } else {
                let map = &self.settings.map;
                let uid = change.uid.map(|u| map.users.to_source(u));
                let gid = change.gid.map(|g| map.groups.to_source(g));
                chown_fd(path_fd.as_fd(), uid, gid).map_err(errno)?;
            }
        }
        if let Some(size) = change.size {
            self.truncate(node, change.fh, size)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(change.atime),
                last_modification: timespec(change.mtime),
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

    /// CHOWN with recorded owners: the new shown owner is recorded, SOURCE's stays. Objects
    /// that cannot carry the record accept the change and keep their default owner.
    fn record_chown(
        &self,
        fd: BorrowedFd<'_>,
        at: At<'_>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        let st = rustix::fs::fstat(fd).map_err(errno)?;
        let shown = self.shown_owner(&st, fd, at);
        let wanted = (uid.unwrap_or(shown.0), gid.unwrap_or(shown.1));
        let mapped = owners::mapped(&self.settings.map, &st);
        self.write_record(&st, fd, at, wanted, mapped)
    }

    fn truncate(&self, node: &Node, fh: Option<FileHandle>, size: u64) -> Result<()> {
        // A handle comes only with ftruncate, so it is a file's descriptor (for a folder
        // the handle would be a `dirs` id, but folders are never truncated).
        let opened;
        let file = match fh {
            Some(fh) => handle::file(fh),
            None => {
                opened = self.reopen(node, OFlags::WRONLY | OFlags::CLOEXEC)?;
                opened.as_fd()
            }
        };
        rustix::fs::ftruncate(file, size).map_err(errno)
    }

    /// The filesystem of `ino` (of the root if `ino` is unknown).
    pub(super) fn stat_fs(&self, ino: INodeNo) -> Result<StatVfs> {
        self.node(ino)
            .or_else(|_| self.node(INodeNo(node::ROOT)))
            .and_then(|n| rustix::fs::fstatvfs(&*self.fd(&n)?).map_err(errno))
    }

    pub(super) fn set_xattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        if owners::is_ours(name) {
            return Err(fuser::Errno::EPERM);
        }
        let (_, fd) = self.node_fd(ino)?;
        let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        rustix::fs::setxattr(proc_path(fd.as_raw_fd()), name, value, flags).map_err(errno)
    }

    pub(super) fn get_xattr(&self, ino: INodeNo, name: &OsStr, size: u32) -> Result<Xattr> {
        if owners::is_ours(name) {
            return Err(fuser::Errno::ENODATA);
        }
        let (_, fd) = self.node_fd(ino)?;
        let path = proc_path(fd.as_raw_fd());
        xattr(
            size,
            || rustix::fs::getxattr_query(&path, name),
            |buf| rustix::fs::getxattr(&path, name, buf),
        )
    }

    /// The object's attribute names, without the server's own (read whole to leave it out,
    /// even when only the size is asked).
    pub(super) fn list_xattr(&self, ino: INodeNo, size: u32) -> Result<Xattr> {
        let (_, fd) = self.node_fd(ino)?;
        let path = proc_path(fd.as_raw_fd());
        let full = rustix::fs::listxattr_query(&path).map_err(errno)?;
        let mut buf = vec![0u8; full];
        let n = rustix::fs::listxattr(&path, &mut buf).map_err(errno)?;
        let list = owners::without_ours(&buf[..n]);
        if size == 0 {
            Ok(Xattr::Size(list.len() as u32))
        } else if list.len() > size as usize {
            Err(fuser::Errno::ERANGE)
        } else {
            Ok(Xattr::Data(list))
        }
    }

    pub(super) fn remove_xattr(&self, ino: INodeNo, name: &OsStr) -> Result<()> {
        if owners::is_ours(name) {
            return Err(fuser::Errno::EPERM);
        }
        let (_, fd) = self.node_fd(ino)?;
        rustix::fs::removexattr(proc_path(fd.as_raw_fd()), name).map_err(errno)
    }
}

/// getxattr/listxattr: size 0 asks for the size; otherwise the value, or ERANGE from SOURCE
/// when it does not fit.
fn xattr(
    size: u32,
    query: impl FnOnce() -> rustix::io::Result<usize>,
    read: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
) -> Result<Xattr> {
    if size == 0 {
        return query().map(|n| Xattr::Size(n as u32)).map_err(errno);
    }
    let mut buf = vec![0u8; size as usize];
    let n = read(&mut buf).map_err(errno)?;
    buf.truncate(n);
    Ok(Xattr::Data(buf))
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

/// Attributes with nothing in them but `kind`: for negative entries and `.`/`..`.
pub(super) fn placeholder_attr(kind: FileType) -> FileAttr {
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
pub(super) fn decode_dev(dev: u32) -> u64 {
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

//! Attributes: SOURCE's stat shown with mapped owners (`FileAttr`), SETATTR (mode, owner
//! through the map, size, times), and the conversions between the kernel's and FUSE's types.

#[allow(unused_imports)]
use super::*;

/// What a SETATTR asks for (ids as the mount shows them).
pub(super) struct AttrChange {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) size: Option<u64>,
    pub(super) atime: Option<TimeOrNow>,
    pub(super) mtime: Option<TimeOrNow>,
    pub(super) fh: Option<FileHandle>,
}

pub(super) fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

pub(super) fn chown_fd(
    fd: BorrowedFd<'_>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> rustix::io::Result<()> {
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
pub(super) fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> rustix::io::Result<()> {
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc_path(fd.as_raw_fd()),
        Mode::from_raw_mode(mode),
        AtFlags::empty(),
    )
}

pub(super) fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

pub(super) fn timespec(t: Option<TimeOrNow>) -> Timespec {
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

pub(super) fn kind(mode: u32) -> FileType {
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

pub(super) fn dirent_kind(t: rustix::fs::FileType) -> FileType {
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
pub(super) fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The kernel's `new_decode_dev`.
pub(super) fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

pub(super) fn key(st: &Stat) -> Key {
    (st.st_dev, st.st_ino)
}

impl MappedFs {
    pub(super) fn attr(&self, st: &Stat) -> FileAttr {
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

    /// Answers with attributes, or the error.
    pub(super) fn reply_attr(&self, reply: ReplyAttr, result: Result<FileAttr>) {
        match result {
            Ok(attr) => reply.attr(&self.settings.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    pub(super) fn stat_node(&self, node: &Node) -> Result<FileAttr> {
        let st = rustix::fs::fstat(&*self.fd(node)?).map_err(errno)?;
        Ok(self.attr(&st))
    }

    pub(super) fn set_attr(&self, node: &Node, change: AttrChange) -> Result<FileAttr> {
        let path_fd = self.fd(node)?;
        if let Some(mode) = change.mode {
            chmod_fd(path_fd.as_fd(), mode & 0o7777).map_err(errno)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            let map = &self.settings.map;
            let uid = change.uid.map(|u| map.users.to_source(u));
            let gid = change.gid.map(|g| map.groups.to_source(g));
            chown_fd(path_fd.as_fd(), uid, gid).map_err(errno)?;
        }
        if let Some(size) = change.size {
            // A handle comes only with ftruncate, so it is a file's descriptor (for a folder
            // the handle would be a `dirs` id, but folders are never truncated).
            let opened;
            let file = match change.fh {
                Some(fh) => borrow_fh(fh),
                None => {
                    opened = self.reopen(node, OFlags::WRONLY | OFlags::CLOEXEC)?;
                    opened.as_fd()
                }
            };
            rustix::fs::ftruncate(file, size).map_err(errno)?;
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
}

//! Descriptor-relative file operations for walking a tree that someone else may be changing.
//!
//! Every function works on one name relative to a directory descriptor and never follows a
//! symbolic link, so a folder swapped for a link to /etc mid-walk cannot redirect anything
//! (the approach of GNU chown's `restricted_chown` and uutils' safe traversal).

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Opens the directory `name` in `dir` for reading its entries.
///
/// # Errors
/// ELOOP or ENOTDIR when `name` is (now) a symlink or not a directory; EXDEV when it is a
/// mount point and `cross_mounts` is false; EACCES when it cannot be read.
pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr, cross_mounts: bool) -> io::Result<OwnedFd> {
    let mut resolve =
        ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    if !cross_mounts {
        resolve |= ResolveFlags::NO_XDEV;
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat2(
        dir,
        name,
        flags,
        Mode::empty(),
        resolve,
    )?)
}

/// Opens whatever `name` in `dir` is, without opening it for I/O (O_PATH|O_NOFOLLOW): a symlink
/// yields the link itself, a fifo or device is not opened, and nothing is read.
pub fn open_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Opens a starting folder by path for a walk.
pub fn open_top(path: &std::path::Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Opens `path` as a handle only (O_PATH, following links: the caller's own view of it), to
/// pass on or to act relative to. Needs search permission on the way, not read permission.
pub fn open_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// [`open_path`] of a folder: ENOTDIR for anything else.
pub fn open_folder_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the folder `path` as a handle (O_PATH), resolved as if `root` were `/`: `..` and
/// absolute symlinks stay inside `root` (RESOLVE_IN_ROOT).
pub fn open_folder_in_root(root: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Names the mount that `fd` is on: (device, filesystem type, mount id). The mount id is
/// the kernel's unique one where it has it (Linux 6.8+): device numbers of FUSE and NFS
/// mounts are reused by later mounts, unique mount ids never are.
pub fn mount_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64, u64)> {
    use rustix::fs::{StatxFlags, statx};
    const MNT_ID_UNIQUE: u32 = 0x4000;
    let want = StatxFlags::MNT_ID | StatxFlags::from_bits_retain(MNT_ID_UNIQUE);
    let stx = statx(fd, "", AtFlags::EMPTY_PATH, want)?;
    let dev = (u64::from(stx.stx_dev_major) << 32) | u64::from(stx.stx_dev_minor);
    let fs_type = rustix::fs::fstatfs(fd)?.f_type as u64;
    Ok((dev, fs_type, stx.stx_mnt_id))
}

/// What a walk needs to know of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    pub dev: u64,
    pub ino: u64,
    pub kind: FileType,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
}

pub fn stat(fd: BorrowedFd<'_>) -> io::Result<Inode> {
    Ok(inode(&rustix::fs::fstat(fd)?))
}

/// Stats `name` in `dir` itself, a symlink included (fstatat with AT_SYMLINK_NOFOLLOW): one
/// syscall where [`open_entry`] and [`stat`] take three with the close. What it says may be
/// out of date by the time it is read: enough to leave an entry alone, never to act on it.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Inode> {
    Ok(inode(&rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// `name` in `dir` itself, a symlink included: what fstat would say of it, and its birth time
/// where the filesystem keeps one, in one statx (an `O_PATH` open, fstat and close would be
/// three calls, and a statx for the birth time a fourth).
pub fn stat_with_birth(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> io::Result<(Stat, Option<(i64, u32)>)> {
    use rustix::fs::StatxFlags;
    let x = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    // SAFETY: `Stat` is `struct stat`, plain integers, for which all zeroes is a value.
    let mut st: Stat = unsafe { std::mem::zeroed() };
    st.st_dev = libc::makedev(x.stx_dev_major, x.stx_dev_minor);
    st.st_ino = x.stx_ino;
    st.st_nlink = x.stx_nlink.into();
    st.st_mode = x.stx_mode.into();
    st.st_uid = x.stx_uid;
    st.st_gid = x.stx_gid;
    st.st_rdev = libc::makedev(x.stx_rdev_major, x.stx_rdev_minor);
    st.st_size = x.stx_size as i64;
    st.st_blksize = x.stx_blksize.into();
    st.st_blocks = x.stx_blocks as i64;
    (st.st_atime, st.st_atime_nsec) = (x.stx_atime.tv_sec as _, x.stx_atime.tv_nsec.into());
    (st.st_mtime, st.st_mtime_nsec) = (x.stx_mtime.tv_sec as _, x.stx_mtime.tv_nsec.into());
    (st.st_ctime, st.st_ctime_nsec) = (x.stx_ctime.tv_sec as _, x.stx_ctime.tv_nsec.into());
    let born = (x.stx_mask & StatxFlags::BTIME.bits() != 0)
        .then_some((x.stx_btime.tv_sec, x.stx_btime.tv_nsec));
    Ok((st, born))
}

fn inode(st: &Stat) -> Inode {
    Inode {
        dev: st.st_dev,
        ino: st.st_ino,
        kind: FileType::from_raw_mode(st.st_mode),
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
    }
}

/// Changes the owner of exactly the inode `fd` refers to (fchownat with AT_EMPTY_PATH works on
/// O_PATH descriptors, symlinks included, where fchown(2) does not).
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    Ok(rustix::fs::chownat(
        fd,
        c"",
        Some(uid),
        Some(gid),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Raises the soft limit on open files to the hard limit: a parallel walk keeps one
/// descriptor per folder whose entries are still being worked on.
pub fn raise_open_files_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = limit.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// What `stat_with_birth` builds from statx is what fstatat says, field by field, for a
    /// file, a folder and a symlink (itself, not what it names).
    #[test]
    fn stat_with_birth_is_fstatat() {
        let dir = std::env::temp_dir().join(format!("asme-sys-stat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), b"12345").unwrap();
        std::fs::create_dir(dir.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("l")).unwrap();
        let top = open_top(&dir).unwrap();
        for name in ["f", "d", "l"] {
            let (got, born) = stat_with_birth(top.as_fd(), name.as_ref()).unwrap();
            let want = rustix::fs::statat(&top, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{name}");
            assert!(
                born.is_some_and(|(s, _)| s > 0),
                "{name}: ext4 and tmpfs keep a birth time"
            );
        }
        let gone = stat_with_birth(top.as_fd(), "nothing".as_ref()).unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

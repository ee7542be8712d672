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

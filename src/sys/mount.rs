//! The new mount API and namespaces: what an idmapped mount is made of.
//!
//! open_tree(2), move_mount(2) and setns(2) come from rustix; mount_setattr(2) is not in
//! rustix 1.x, so it is the one raw syscall here.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags, move_mount, open_tree, unmount};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// `MOUNT_ATTR_IDMAP` and `MOUNT_ATTR_RDONLY` from linux/mount.h.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// `struct mount_attr` from linux/mount.h (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount tree at `source` (open_tree OPEN_TREE_CLONE|AT_RECURSIVE).
///
/// AT_RECURSIVE keeps mounts nested under `source`; without it they would vanish from the
/// copy.
pub fn clone_tree(source: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(open_tree(
        source,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH
            | OpenTreeFlags::AT_RECURSIVE,
    )?)
}

/// Marks every mount of a detached tree idmapped with the mapping of `userns`.
///
/// # Errors
/// EINVAL when the filesystem does not support idmapped mounts (FUSE without opt-in, NFS,
/// overlayfs), EPERM without CAP_SYS_ADMIN, ENOSYS before Linux 5.12.
pub fn set_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    mount_setattr(tree, MOUNT_ATTR_IDMAP, userns.as_raw_fd() as u64)
}

/// Makes every mount of a detached tree read-only.
pub fn set_read_only(tree: BorrowedFd<'_>) -> io::Result<()> {
    mount_setattr(tree, MOUNT_ATTR_RDONLY, 0)
}

/// mount_setattr(2) of `attr_set` on `tree` and everything under it.
fn mount_setattr(tree: BorrowedFd<'_>, attr_set: u64, userns_fd: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: `attr` is a valid, initialised struct mount_attr that outlives the call, its size
    // is passed alongside, and the path is a NUL-terminated empty string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attaches a detached tree at `target` (move_mount with MOVE_MOUNT_F_EMPTY_PATH).
pub fn attach(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    Ok(move_mount(
        tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?)
}

/// Mounts the FUSE filesystem served over `dev` (an open `/dev/fuse`) at `target`, as root
/// does without fusermount: type `fuse.SUBTYPE`, never setuid files or devices. `options`
/// are FUSE's own (`user_id=`, `allow_other`, ...), after the fd and root mode.
pub fn mount_fuse(
    dev: BorrowedFd<'_>,
    target: &Path,
    fsname: &str,
    subtype: &str,
    options: &str,
    read_only: bool,
) -> io::Result<()> {
    use rustix::mount::{MountFlags, mount};
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    let data = format!("fd={},rootmode=40000,{options}", dev.as_raw_fd());
    let data =
        std::ffi::CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(mount(
        fsname,
        target,
        format!("fuse.{subtype}"),
        flags,
        data.as_c_str(),
    )?)
}

/// Lazily unmounts `target` and everything under it (umount2 MNT_DETACH): users of the
/// mount, such as a container's own bind of it, keep theirs.
pub fn detach(target: &Path) -> io::Result<()> {
    Ok(unmount(
        target,
        UnmountFlags::DETACH | UnmountFlags::NOFOLLOW,
    )?)
}

/// Whether `path` (not followed if a symlink) is the root of a mount: a lease entry still
/// attached must never be emptied like a plain folder.
pub fn is_mount_root(path: &Path) -> io::Result<bool> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    let stx = statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    if !stx
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
    {
        // Linux before 5.8 does not say; count it as a mount, so nothing is removed.
        return Ok(true);
    }
    Ok(stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Takes an exclusive lock on the file at `path` (created 0600 if missing), waiting for any
/// holder; the lock lasts as long as the returned descriptor.
pub fn lock_exclusive(path: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{FlockOperation, Mode, OFlags, flock, open};
    let fd = open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    flock(&fd, FlockOperation::LockExclusive)?;
    Ok(fd)
}

/// Moves this process into the mount namespace of process `pid`.
///
/// # Errors
/// EINVAL if the process has more than one thread (setns(2) refuses to split a shared
/// fs_struct), EPERM without CAP_SYS_ADMIN and CAP_SYS_CHROOT, EACCES on /proc/PID/ns/mnt
/// without the right to ptrace `pid`.
pub fn enter_mount_namespace(pid: u32) -> io::Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Mount))?;
    // Our cwd still points into the old namespace's tree.
    std::env::set_current_dir("/")
}

/// Moves this process into the user namespace, then the mount namespace, of process `pid`:
/// a rootless engine's, whose owner holds every capability in it.
///
/// # Errors
/// EINVAL if the process has more than one thread, EPERM if the user namespace is not owned
/// by this process's user, EACCES on /proc/PID/ns/* without the right to ptrace `pid`.
pub fn enter_user_and_mount_namespaces(pid: u32) -> io::Result<()> {
    // Both are opened first: /proc may look different once inside.
    let user = fs::File::open(format!("/proc/{pid}/ns/user"))?;
    let mnt = fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    move_into_link_name_space(user.as_fd(), Some(LinkNameSpaceType::User))?;
    move_into_link_name_space(mnt.as_fd(), Some(LinkNameSpaceType::Mount))?;
    std::env::set_current_dir("/")
}

/// A user namespace file descriptor carrying these mappings (`uid_map`/`gid_map` text, one
/// "inside outside count" line per range), for [`set_idmap`].
///
/// A user namespace needs a process to exist in: a child is forked into a fresh one, its
/// maps are written from here, the namespace is kept by fd, and the child is killed.
pub fn user_namespace(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: the child only makes raw syscalls (unshare, write, pause, _exit): nothing that
    // allocates or takes a lock, so forking from a multi-threaded process is sound.
    let child = match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: this child is single-threaded, so unsharing the user namespace is allowed
            // and affects no other thread.
            let ok =
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) }
                    .is_ok();
            let _ = rustix::io::write(&ready_w, &[u8::from(ok)]);
            loop {
                // SAFETY: pause(2) has no preconditions; the parent ends us with SIGKILL.
                unsafe { libc::pause() };
            }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let result = (|| {
        let mut byte = [0u8];
        let n = rustix::io::read(&ready_r, &mut byte)?;
        if n != 1 || byte[0] != 1 {
            return Err(io::Error::other("creating a user namespace failed"));
        }
        let proc = format!("/proc/{}", child.as_raw());
        fs::write(format!("{proc}/uid_map"), uid_map)
            .map_err(|e| io::Error::new(e.kind(), format!("writing uid_map: {e}")))?;
        fs::write(format!("{proc}/gid_map"), gid_map)
            .map_err(|e| io::Error::new(e.kind(), format!("writing gid_map: {e}")))?;
        Ok(OwnedFd::from(fs::File::open(format!("{proc}/ns/user"))?))
    })();
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// Whether `fd` can be told apart from an `O_PATH` descriptor that is a directory.
pub fn is_dir(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory)
}

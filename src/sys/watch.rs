//! fanotify, for watching SOURCE's folders (`fs::watch`): the group, its marks, and the file
//! handles its events name folders by. rustix 1.x has no fanotify, so these are libc calls.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What a folder's mark reports: names made, removed or moved in it, and changes to its
/// children's and its own contents and attributes.
const FOLDER_EVENTS: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ATTRIB
    | libc::FAN_MODIFY
    | libc::FAN_DELETE_SELF
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;

/// A notification group whose events name the folder (by file handle) and the entry's name
/// (`FAN_REPORT_DFID_NAME`, Linux 5.9; an ordinary user may make one since 5.13).
pub fn group() -> io::Result<OwnedFd> {
    // Non-blocking: the event thread polls, then reads what has gathered.
    let flags =
        libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME;
    // SAFETY: fanotify_init takes two flag words and returns a new descriptor or -1.
    let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor fanotify_init just made, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Marks (or, with `add` false, unmarks) the folder at `path` (a `/proc/self/fd/N` magic
/// link: marks do not take `O_PATH` descriptors).
pub fn mark_folder(group: BorrowedFd<'_>, path: &CStr, add: bool) -> io::Result<()> {
    let flags = if add {
        libc::FAN_MARK_ADD
    } else {
        libc::FAN_MARK_REMOVE
    } | libc::FAN_MARK_ONLYDIR;
    // SAFETY: path is a NUL-terminated string that outlives the call; the rest are plain values.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            FOLDER_EVENTS,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most bytes a file handle has (MAX_HANDLE_SZ).
const MAX_HANDLE: usize = 128;

/// `fd`'s file handle as fanotify reports it: the handle type (native-endian i32), then its
/// bytes.
pub fn file_handle(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        data: [u8; MAX_HANDLE],
    }
    let mut handle = Handle {
        bytes: MAX_HANDLE as libc::c_uint,
        kind: 0,
        data: [0; MAX_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `handle` starts with a struct file_handle whose handle_bytes says how much room
    // follows; the empty path with AT_EMPTY_PATH names `fd` itself; mount_id is written.
    let r = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut handle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (handle.bytes as usize).min(MAX_HANDLE);
    let mut out = handle.kind.to_ne_bytes().to_vec();
    out.extend_from_slice(&handle.data[..len]);
    Ok(out)
}

/// The filesystem id fanotify names `fd`'s filesystem by (statfs's `f_fsid`).
pub fn filesystem_id(fd: BorrowedFd<'_>) -> io::Result<[u8; 8]> {
    let st = rustix::fs::fstatfs(fd)?;
    // SAFETY: fsid_t is two i32s, plain data with no padding: reading its bytes is sound.
    let raw: [u8; 8] = unsafe { std::mem::transmute(st.f_fsid) };
    Ok(raw)
}

//! Recorded owners (`-o record_owners`): every file stays the owner's on SOURCE, and the
//! owner the mount shows (what the container chose: a database's `chown -R postgres`, a
//! service user's new files) is kept beside it, in the extended attribute [`XATTR`].
//!
//! - Shown owner: the attribute's `UID:GID` (ids as the mount shows them), else the map's
//!   view of SOURCE's owner, as without recording.
//! - CHOWN through the mount records the new owner (or removes the record when it is the
//!   default again) and leaves SOURCE's owner alone. The kernel has already checked that the
//!   caller may (`default_permissions`, on the shown owner), and clears set-id bits itself.
//! - What the mount creates is stored as [`Recorded::disk`] and recorded as its creator's.
//! - Only regular files and folders carry `user.` attributes (Linux refuses them elsewhere):
//!   symlinks, devices, fifos and sockets show the default owner, and a chown of one is
//!   accepted and not kept, as on a filesystem that ignores ownership.
//! - The attribute is the server's: the mount neither lists nor lets anyone read, write or
//!   remove it, so a process in the container cannot make its file look like root's.
//!
//! Docker Desktop's file sharing on macOS does the same with `com.docker.grpcfuse.ownership`.
//! Used without asme, the folder shows the user's files with their modes: the recorded
//! owners are simply not applied.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::Stat;
use rustix::io::Errno as SysErrno;

use super::map::OwnerMap;
use super::proc_path;

/// The attribute holding a file's shown owner, `UID:GID`.
pub const XATTR: &str = "user.asme.owner";

/// Recording is on: every file made through the mount is stored as `disk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub disk: (u32, u32),
}

/// Whether `st` may carry a `user.` attribute.
pub fn can_record(st: &Stat) -> bool {
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// The owner the map shows for SOURCE's owner of `st`.
pub fn mapped(map: &OwnerMap, st: &Stat) -> (u32, u32) {
    (
        map.users.to_mount(st.st_uid),
        map.groups.to_mount(st.st_gid),
    )
}

/// The recorded owner of the object behind `fd`, if any (a malformed record counts as none).
pub fn read(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut buf = [0u8; 32];
    let n = rustix::fs::getxattr(proc_path(fd.as_raw_fd()), XATTR, &mut buf).ok()?;
    parse(&buf[..n])
}

/// Records `owner` for the object behind `fd`, or removes the record when `owner` is what
/// the map shows anyway.
pub fn write(fd: BorrowedFd<'_>, owner: (u32, u32), default: (u32, u32)) -> rustix::io::Result<()> {
    let path = proc_path(fd.as_raw_fd());
    if owner == default {
        return match rustix::fs::removexattr(&path, XATTR) {
            Err(SysErrno::NODATA) => Ok(()),
            other => other,
        };
    }
    let value = format!("{}:{}", owner.0, owner.1);
    rustix::fs::setxattr(
        &path,
        XATTR,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
}

fn parse(value: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// Whether `name` is the server's own attribute, which the mount hides.
pub fn is_ours(name: &OsStr) -> bool {
    name == OsStr::new(XATTR)
}

/// A `listxattr` list (names, each NUL-terminated) without the server's own attribute.
pub fn without_ours(list: &[u8]) -> Vec<u8> {
    list.split_inclusive(|b| *b == 0)
        .filter(|name| *name != [XATTR.as_bytes(), b"\0"].concat().as_slice())
        .flat_map(|name| name.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_malformed_ones_count_as_none() {
        assert_eq!(parse(b"999:999"), Some((999, 999)));
        assert_eq!(parse(b"0:5"), Some((0, 5)));
        for bad in [
            &b""[..],
            b"999",
            b"a:b",
            b"1:2:3",
            b"-1:0",
            b"99999999999:0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_list_hides_only_our_attribute() {
        let list = b"user.a\0user.asme.owner\0security.selinux\0user.asme.owner2\0";
        assert_eq!(
            without_ours(list),
            b"user.a\0security.selinux\0user.asme.owner2\0".to_vec()
        );
        assert_eq!(without_ours(b""), Vec::<u8>::new());
        assert!(is_ours(OsStr::new("user.asme.owner")));
        assert!(!is_ours(OsStr::new("user.asme.owner2")));
    }
}

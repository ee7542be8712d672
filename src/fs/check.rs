//! Host checks before `asme mount` mounts anything: the mount point, /dev/fuse, and for an
//! ordinary user fusermount and /etc/fuse.conf.
//!
//! Each refusal is one line that says what to change, so a failed mount leaves nothing
//! behind; `mount` decides when each check runs.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use fuser::SessionACL;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::mount::mount_at;

/// Whether a FUSE mount's answer says its server is gone: ENOTCONN, or ECONNABORTED while
/// the kernel still takes the dead server's io_uring queues down.
pub fn server_gone(e: Errno) -> bool {
    matches!(e, Errno::NOTCONN | Errno::CONNABORTED)
}

pub(super) fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    match rustix::fs::stat(mountpoint) {
        Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
            bail!("{}: not a folder", mountpoint.display())
        }
        Ok(_) => {}
        Err(e) if server_gone(e) => bail!(
            "{}: a stale FUSE mount whose server is gone (killed?); recover it with `asme umount {}`",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(Errno::NOENT) => bail!("{}: no such folder", mountpoint.display()),
        Err(e) => bail!("{}: {}", mountpoint.display(), std::io::Error::from(e)),
    }
    if let Some(m) = mount_at(mountpoint) {
        bail!(
            "{}: already a mount point ({} of {}); unmount it first",
            mountpoint.display(),
            m.fstype,
            m.source
        );
    }
    Ok(())
}

pub(super) fn check_dev_fuse() -> Result<()> {
    match rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(_) => Ok(()),
        Err(Errno::NOENT) => bail!("/dev/fuse is missing: load FUSE (`modprobe fuse`)"),
        Err(Errno::ACCESS) | Err(Errno::PERM) => {
            let mode = rustix::fs::stat("/dev/fuse").map_or(0, |s| s.st_mode & 0o777);
            bail!(
                "cannot open /dev/fuse: permission denied (its mode is {mode:04o}; distributions \
                 ship it 0666 so that users can mount FUSE: `sudo chmod 0666 /dev/fuse`)"
            )
        }
        Err(e) => bail!("cannot open /dev/fuse: {}", std::io::Error::from(e)),
    }
}

/// An ordinary user mounts through the setuid `fusermount`, which allows allow_other only
/// when the administrator said so in /etc/fuse.conf.
pub(super) fn check_user_mount(acl: SessionACL) -> Result<()> {
    if fusermount().is_none() {
        bail!("no fusermount3 or fusermount: install the fuse3 package (it mounts FUSE for users)");
    }
    if acl != SessionACL::Owner && !user_allow_other() {
        bail!(
            "docker (root) and other users can reach your mount only with allow_other, which \
             needs the line `user_allow_other` in /etc/fuse.conf (ask an admin to add it); \
             -o private makes a mount only you can use"
        );
    }
    Ok(())
}

fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|text| {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == "user_allow_other")
    })
}

/// The setuid helper that mounts FUSE for users, if installed.
pub(super) fn fusermount() -> Option<PathBuf> {
    [
        "/usr/bin/fusermount3",
        "/bin/fusermount3",
        "/usr/bin/fusermount",
        "/bin/fusermount",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

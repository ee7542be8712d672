//! Names: LOOKUP, and the requests that make, remove, rename and link names in a folder, or
//! read what a symlink names.
//!
//! Each is one `*at()` call relative to the parent's descriptor. The inode table (`node`)
//! learns what a name now means: what the kernel looked up or the server made is counted, a
//! node losing its name is pinned (it could not be found again), a renamed one learns its new
//! name. Who owns what the server makes is `attr`'s `give_to_creator`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use fuser::{Errno, FileAttr, INodeNo};
use rustix::fs::{AtFlags, Mode, RenameFlags};

use super::attr::{At, decode_dev};
use super::node::Key;
use super::{Caller, MappedFs, Result, errno, key, open_path, owners, proc_path};
use crate::sys;

impl MappedFs {
    /// Looks `name` up in `parent` and counts the kernel's reference.
    pub(super) fn lookup_entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        if self.hidden(parent, name) {
            return Err(Errno::ENOENT);
        }
        let (_, dir) = self.node_fd(parent)?;
        if let Some(attr) = self.lookup_known(parent, &dir, name)? {
            return Ok(attr);
        }
        let fd = open_path(&dir, name)?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        let attr = self.attr(&st, fd.as_fd(), At::Child(parent.0, name));
        self.watch_if_folder(&fd, &st, self.nodes.id_for(key(&st)));
        self.nodes.remember(fd, key(&st), parent.0, name);
        Ok(attr)
    }

    /// LOOKUP of a name whose object the kernel already has (READDIRPLUS offers it every
    /// entry of a listing, `rm -rf` lists each folder twice): one statx by name, where
    /// opening, statting and closing it took three calls and a closed node's reopen more.
    /// None where the full lookup is needed: an object the kernel does not have, a folder
    /// (the watch needs its descriptor), a recorded owner (read through the object's).
    fn lookup_known(
        &self,
        parent: INodeNo,
        dir: &OwnedFd,
        name: &OsStr,
    ) -> Result<Option<FileAttr>> {
        if self.settings.recorded.is_some() {
            return Ok(None);
        }
        let (st, born) = sys::fs::stat_with_birth(dir.as_fd(), name).map_err(Errno::from)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
            || self.nodes.recount(key(&st), born, parent.0, name).is_none()
        {
            return Ok(None);
        }
        let owner = owners::mapped(&self.settings.map, &st);
        Ok(Some(self.attr_owned(&st, owner)))
    }

    /// A new object `name` in `parent`, just made by this server: give it to its creator
    /// (mapped to SOURCE's ids) and count the kernel's reference, with `path_fd` (its `O_PATH`
    /// descriptor, opened by name) as the node. `made` is the key of what this server created,
    /// when it holds another descriptor of it: the name must still be that object.
    pub(super) fn adopt(
        &self,
        caller: Caller,
        parent: (INodeNo, &OwnedFd),
        name: &OsStr,
        path_fd: OwnedFd,
        made: Option<Key>,
    ) -> Result<FileAttr> {
        let st = rustix::fs::fstat(&path_fd).map_err(errno)?;
        if made.is_some_and(|made| made != key(&st)) {
            return Err(Errno::ESTALE); // replaced on SOURCE in between
        }
        let st = if let Some(recorded) = self.settings.recorded {
            self.record_creator(recorded, caller, parent, (path_fd.as_fd(), name), &st)?
        } else if self.as_root {
            self.give_to_creator(caller, parent.1, path_fd.as_fd(), &st)?
        } else {
            st
        };
        let attr = self.attr(&st, path_fd.as_fd(), At::Child((parent.0).0, name));
        self.watch_if_folder(&path_fd, &st, self.nodes.id_for(key(&st)));
        self.nodes.remember(path_fd, key(&st), (parent.0).0, name);
        Ok(attr)
    }

    /// MKNOD: a device, fifo, socket or empty file.
    pub(super) fn mknod_at(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr> {
        self.make_node(caller, parent, name, |dir| {
            let kind = rustix::fs::FileType::from_raw_mode(mode);
            let perm = Mode::from_raw_mode(mode & 0o7777);
            rustix::fs::mknodat(dir, name, kind, perm, decode_dev(rdev))
        })
    }

    pub(super) fn mkdir_at(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr> {
        self.make_node(caller, parent, name, |dir| {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777))
        })
    }

    pub(super) fn symlink_at(
        &self,
        caller: Caller,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr> {
        self.make_node(caller, parent, link_name, |dir| {
            rustix::fs::symlinkat(target, dir, link_name)
        })
    }

    fn make_node(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) -> Result<FileAttr> {
        if self.hidden(parent, name) {
            return Err(Errno::EACCES);
        }
        let (_, dir) = self.node_fd(parent)?;
        make(dir.as_fd()).map_err(errno)?;
        let fd = open_path(&dir, name)?;
        self.adopt(caller, (parent, &dir), name, fd, None)
    }

    /// UNLINK, or RMDIR with `AtFlags::REMOVEDIR`.
    pub(super) fn unlink_at(&self, parent: INodeNo, name: &OsStr, flags: AtFlags) -> Result<()> {
        if self.hidden(parent, name) {
            return Err(Errno::ENOENT);
        }
        let (_, dir) = self.node_fd(parent)?;
        self.pin_named(&dir, name);
        rustix::fs::unlinkat(&*dir, name, flags).map_err(errno)?;
        if let Some(sidecar) = &self.sidecar
            && let Some(path) = self.nodes.path(parent.0)
        {
            sidecar.removed(&path.join(name)).map_err(io_errno)?;
        }
        Ok(())
    }

    pub(super) fn rename_at(
        &self,
        from: (INodeNo, &OsStr),
        to: (INodeNo, &OsStr),
        flags: RenameFlags,
    ) -> Result<()> {
        let ((parent, name), (newparent, newname)) = (from, to);
        if self.hidden(parent, name) || self.hidden(newparent, newname) {
            return Err(Errno::EACCES);
        }
        let (_, dir) = self.node_fd(parent)?;
        let (_, new_dir) = self.node_fd(newparent)?;
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        if !exchange {
            self.pin_named(&new_dir, newname); // replaced, if it exists
        }
        rustix::fs::renameat_with(&*dir, name, &*new_dir, newname, flags).map_err(errno)?;
        let paths = self.sidecar.as_ref().and_then(|_| {
            Some((
                self.nodes.path(parent.0)?.join(name),
                self.nodes.path(newparent.0)?.join(newname),
            ))
        });
        // Nodes known by the names that moved learn their new ones.
        self.moved(&new_dir, newname, (newparent, newname));
        if exchange {
            self.moved(&dir, name, (parent, name));
        }
        if let (Some(sidecar), Some((old, new))) = (&self.sidecar, paths) {
            if exchange {
                // Through a name no path can have (a NUL), so neither side is lost.
                let aside = Path::new("\u{0}exchange");
                sidecar.moved(&new, aside).map_err(io_errno)?;
                sidecar.moved(&old, &new).map_err(io_errno)?;
                sidecar.moved(aside, &old).map_err(io_errno)?;
            } else {
                sidecar.moved(&old, &new).map_err(io_errno)?;
            }
        }
        Ok(())
    }

    pub(super) fn link_at(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<FileAttr> {
        if self.hidden(newparent, newname) {
            return Err(Errno::EACCES);
        }
        let (_, fd) = self.node_fd(ino)?;
        let (_, new_dir) = self.node_fd(newparent)?;
        // Through the magic link (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path(fd.as_raw_fd()),
            &*new_dir,
            newname,
            AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(errno)?;
        self.lookup_entry(newparent, newname)
    }

    /// What the symlink `ino` names.
    pub(super) fn readlink_of(&self, ino: INodeNo) -> Result<Vec<u8>> {
        let (_, fd) = self.node_fd(ino)?;
        let target = rustix::fs::readlinkat(&*fd, "", Vec::new()).map_err(errno)?;
        Ok(target.into_bytes())
    }

    /// The known node named `name` in `dir` is losing that name: keep it reachable.
    fn pin_named(&self, dir: &OwnedFd, name: &OsStr) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Some(node) = self.nodes.by_key(key(&st))
        {
            let _ = self.nodes.pin(&node);
        }
    }

    /// The object now named `name` in `dir` was renamed there.
    fn moved(&self, dir: &OwnedFd, name: &OsStr, to: (INodeNo, &OsStr)) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Some(node) = self.nodes.by_key(key(&st))
        {
            self.nodes.renamed(&node, ((to.0).0, to.1));
        }
    }
}

/// An I/O error of the sidecar as FUSE's errno.
fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

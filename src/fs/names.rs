//! Names: making and linking entries (MKNOD, SYMLINK, LINK, RENAME), adopting what was made
//! into the inode table, giving it to its creator, and keeping nodes whose names are gone.

#[allow(unused_imports)]
use super::*;

impl MappedFs {
    /// A new object `name` in `parent`, just made by this server: give it to its creator
    /// (mapped to SOURCE's ids) and count the kernel's reference, with `path_fd` (its `O_PATH`
    /// descriptor, opened by name) as the node. `made` is the key of what this server created,
    /// when it holds another descriptor of it: the name must still be that object.
    pub(super) fn adopt(
        &self,
        req: &Request,
        parent: (INodeNo, &OwnedFd),
        name: &OsStr,
        path_fd: OwnedFd,
        made: Option<Key>,
    ) -> Result<FileAttr> {
        let st = rustix::fs::fstat(&path_fd).map_err(errno)?;
        if made.is_some_and(|made| made != key(&st)) {
            return Err(Errno::ESTALE); // replaced on SOURCE in between
        }
        let st = if self.as_root {
            self.give_to_creator(req, parent.1, path_fd.as_fd(), &st)?
        } else {
            st
        };
        self.nodes.remember(path_fd, key(&st), (parent.0).0, name);
        Ok(self.attr(&st))
    }

    /// chown to the creator's ids; a set-group-id parent keeps its group (as the kernel would
    /// have done for the creator). chown clears set-id bits the creator asked for: restore.
    pub(super) fn give_to_creator(
        &self,
        req: &Request,
        parent: &OwnedFd,
        fd: BorrowedFd<'_>,
        st: &Stat,
    ) -> Result<Stat> {
        let map = &self.settings.map;
        let uid = map.users.to_source(req.uid());
        let parent_st = rustix::fs::fstat(parent).map_err(errno)?;
        let gid = if parent_st.st_mode as u32 & libc::S_ISGID != 0 {
            parent_st.st_gid
        } else {
            map.groups.to_source(req.gid())
        };
        if st.st_uid == uid && st.st_gid == gid {
            return Ok(*st);
        }
        chown_fd(fd, Some(uid), Some(gid)).map_err(errno)?;
        let mode = st.st_mode;
        let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            chmod_fd(fd, mode & 0o7777).map_err(errno)?;
        }
        rustix::fs::fstat(fd).map_err(errno)
    }

    /// The known node named `name` in `dir` is losing that name: keep it reachable.
    pub(super) fn pin_named(&self, dir: &OwnedFd, name: &OsStr) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Some(node) = self.nodes.by_key(key(&st))
        {
            let _ = self.nodes.pin(&node);
        }
    }

    /// The object now named `name` in `dir` was renamed there.
    pub(super) fn moved(&self, dir: &OwnedFd, name: &OsStr, to: (INodeNo, &OsStr)) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && let Some(node) = self.nodes.by_key(key(&st))
        {
            self.nodes.renamed(&node, ((to.0).0, to.1));
        }
    }

    pub(super) fn make_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) -> Result<FileAttr> {
        let (_, dir) = self.node_fd(parent)?;
        make(dir.as_fd()).map_err(errno)?;
        let fd = open_path(&dir, name)?;
        self.adopt(req, (parent, &dir), name, fd, None)
    }

    /// RENAME (with RENAME_NOREPLACE and RENAME_EXCHANGE as asked).
    pub(super) fn rename_entry(
        &self,
        from: (INodeNo, &OsStr),
        to: (INodeNo, &OsStr),
        flags: RenameFlags,
    ) -> Result<()> {
        let ((parent, name), (newparent, newname)) = (from, to);
        let (_, dir) = self.node_fd(parent)?;
        let (_, new_dir) = self.node_fd(newparent)?;
        let flags = rustix::fs::RenameFlags::from_bits_retain(flags.bits());
        let exchange = flags.contains(rustix::fs::RenameFlags::EXCHANGE);
        if !exchange {
            self.pin_named(&new_dir, newname); // replaced, if it exists
        }
        rustix::fs::renameat_with(&*dir, name, &*new_dir, newname, flags).map_err(errno)?;
        // Nodes known by the names that moved learn their new ones.
        self.moved(&new_dir, newname, (newparent, newname));
        if exchange {
            self.moved(&dir, name, (parent, name));
        }
        Ok(())
    }

    /// LINK: another name for node `ino`.
    pub(super) fn link_entry(&self, ino: INodeNo, to: (INodeNo, &OsStr)) -> Result<FileAttr> {
        let (newparent, newname) = to;
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
}

//! Listings: open folders (read once at opendir or rewind), and READDIR and READDIRPLUS over
//! the same walk of them.
//!
//! The `*_op` methods take the request's own arguments, as fuser's `Filesystem` trait
//! gives them (the trait methods in `mod.rs` only hand them on).
#![allow(clippy::too_many_arguments)]

#[allow(unused_imports)]
use super::*;

/// An open directory: its descriptor and the entries read at opendir or rewind.
#[derive(Debug)]
pub(super) struct DirHandle {
    pub(super) fd: OwnedFd,
    /// st_dev of the folder: entries' inode numbers become node ids with it.
    dev: u64,
    entries: Mutex<Vec<DirEntry>>,
}

#[derive(Debug, Clone)]
pub(super) struct DirEntry {
    name: CString,
    ino: u64,
    kind: FileType,
}

pub(super) fn read_dir(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<DirEntry>> {
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    dir.rewind();
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        out.push(DirEntry {
            name: entry.file_name().to_owned(),
            ino: entry.ino(),
            kind: dirent_kind(entry.file_type()),
        });
    }
    Ok(out)
}

impl MappedFs {
    pub(super) fn open_dir_handle(&self, node: &Node) -> Result<u64> {
        let fd = rustix::fs::openat(
            &*self.fd(node)?,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let dev = rustix::fs::fstat(&fd).map_err(errno)?.st_dev;
        let handle = Arc::new(DirHandle {
            fd,
            dev,
            entries: Mutex::new(Vec::new()),
        });
        let id = self.next_dir.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(id, handle);
        Ok(id)
    }

    pub(super) fn dir_handle(&self, fh: FileHandle) -> Result<Arc<DirHandle>> {
        lock(&self.dirs).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The folder's entries (index + 1 is each one's offset); offset 0 (opendir, rewinddir)
    /// reads the folder afresh.
    pub(super) fn entries<'d>(
        &self,
        dir: &'d DirHandle,
        offset: u64,
    ) -> Result<std::sync::MutexGuard<'d, Vec<DirEntry>>> {
        let mut entries = lock(&dir.entries);
        if offset == 0 {
            *entries = read_dir(dir.fd.as_fd()).map_err(errno)?;
            // The numbers stat shows (`node`): SOURCE's, but 1 for the root.
            for e in entries.iter_mut() {
                e.ino = self.nodes.id_for((dir.dev, e.ino));
            }
        }
        Ok(entries)
    }

    /// Runs `list` over the entries of open folder `fh` (read again when `offset` is 0).
    fn with_entries(
        &self,
        fh: FileHandle,
        offset: u64,
        list: impl FnOnce(&[DirEntry]) -> Result<()>,
    ) -> Result<()> {
        let dir = self.dir_handle(fh)?;
        let entries = self.entries(&dir, offset)?;
        list(&entries)
    }

    pub(super) fn readdir_op(&self, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listed = self.with_entries(fh, offset, |entries| {
            for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                let name = OsStr::from_bytes(e.name.as_bytes());
                if reply.add(INodeNo(e.ino), i as u64 + 1, e.kind, name) {
                    break;
                }
            }
            Ok(())
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// READDIRPLUS: each entry with its attributes, looked up as LOOKUP does (so each one the
    /// kernel keeps holds a reference).
    pub(super) fn readdirplus_op(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.settings.ttl;
        let listed = self.with_entries(fh, offset, |entries| {
            for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                let next = i as u64 + 1;
                let name = OsStr::from_bytes(e.name.as_bytes());
                if name == "." || name == ".." {
                    // The kernel links no entry (and takes no reference) for these names; the
                    // number is what readdir(3) shows, and glibc drops entries numbered 0.
                    let attr = FileAttr {
                        ino: INodeNo(e.ino),
                        ..placeholder_attr(e.kind)
                    };
                    let zero = Duration::ZERO;
                    if reply.add(INodeNo(e.ino), next, name, &zero, &attr, Generation(0)) {
                        break;
                    }
                    continue;
                }
                let attr = match self.lookup_entry(ino, name) {
                    Ok(attr) => attr,
                    Err(Errno::ENOENT) => continue, // gone since the folder was read
                    // Any other failure must not shorten the listing silently: what was added
                    // goes now, and the kernel asks again from here (or gets the error).
                    Err(e) if i == offset as usize => return Err(e),
                    Err(_) => break,
                };
                if reply.add(attr.ino, next, name, &ttl, &attr, Generation(0)) {
                    // Not sent: the reference just counted is not the kernel's.
                    self.nodes.forget(attr.ino.0, 1);
                    break;
                }
            }
            Ok(())
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

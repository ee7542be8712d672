//! Open folders: OPENDIR, READDIR and READDIRPLUS, FSYNCDIR, RELEASEDIR.
//!
//! A folder handle is an id in `Dirs` for a read descriptor and the entries read at offset 0
//! (opendir or rewinddir); later offsets page through that list, so a folder changing during
//! a listing neither repeats nor skips entries. READDIR and READDIRPLUS share one walk over
//! the list; READDIRPLUS also looks each entry up (`names`), so the kernel gets attributes
//! and a counted reference with every name.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus,
};
use rustix::fs::{Mode, OFlags};

use super::attr::placeholder_attr;
use super::node::Node;
use super::{MappedFs, Result, errno, lock};

/// The open folders, by handle.
#[derive(Debug)]
pub(super) struct Dirs {
    open: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next: AtomicU64,
}

impl Default for Dirs {
    fn default() -> Dirs {
        Dirs {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

/// An open directory: its descriptor and the entries read at opendir or rewind.
#[derive(Debug)]
struct DirHandle {
    fd: OwnedFd,
    /// The node's id (the root's listing leaves out the sidecar of recorded owners).
    ino: INodeNo,
    /// st_dev of the folder: entries' inode numbers become node ids with it.
    dev: u64,
    entries: Mutex<Vec<DirEntry>>,
}

#[derive(Debug, Clone)]
struct DirEntry {
    name: CString,
    ino: u64,
    kind: FileType,
}

impl DirEntry {
    fn name(&self) -> &OsStr {
        OsStr::from_bytes(self.name.as_bytes())
    }
}

impl MappedFs {
    /// OPENDIR: a new folder handle.
    pub(super) fn open_dir(&self, node: &Node) -> Result<FileHandle> {
        let ino = INodeNo(self.nodes.id_for(node.key));
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
            ino,
            dev,
            entries: Mutex::new(Vec::new()),
        });
        let id = self.dirs.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs.open).insert(id, handle);
        Ok(FileHandle(id))
    }

    fn dir_handle(&self, fh: FileHandle) -> Result<Arc<DirHandle>> {
        lock(&self.dirs.open)
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// RELEASEDIR.
    pub(super) fn release_dir(&self, fh: FileHandle) {
        lock(&self.dirs.open).remove(&fh.0);
    }

    /// FSYNCDIR.
    pub(super) fn sync_dir(&self, fh: FileHandle, datasync: bool) -> Result<()> {
        let dir = self.dir_handle(fh)?;
        if datasync {
            rustix::fs::fdatasync(&dir.fd)
        } else {
            rustix::fs::fsync(&dir.fd)
        }
        .map_err(errno)
    }

    /// READDIR: names, numbers and kinds from `offset` on, as many as fit in `reply`.
    pub(super) fn list(&self, fh: FileHandle, offset: u64, reply: &mut impl DirSink) -> Result<()> {
        self.walk(fh, offset, |next, e| {
            Ok(stop_if(reply.add(INodeNo(e.ino), next, e.kind, e.name())))
        })
    }

    /// READDIRPLUS: READDIR with each entry looked up, its attributes sent and the kernel's
    /// reference counted (`ino` is the folder's node).
    pub(super) fn list_plus(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: &mut impl DirPlusSink,
    ) -> Result<()> {
        let ttl = self.ttl();
        self.walk(fh, offset, |next, e| {
            let name = e.name();
            if name == "." || name == ".." {
                // The kernel links no entry (and takes no reference) for these names; the
                // number is what readdir(3) shows, and glibc drops entries numbered 0.
                let attr = FileAttr {
                    ino: INodeNo(e.ino),
                    ..placeholder_attr(e.kind)
                };
                let zero = Duration::ZERO;
                return Ok(stop_if(reply.add(next, name, &zero, &attr)));
            }
            let attr = match self.lookup_entry(ino, name) {
                Ok(attr) => attr,
                // Gone since the folder was read.
                Err(Errno::ENOENT) => return Ok(ControlFlow::Continue(())),
                // Any other failure must not shorten the listing silently: what was added
                // goes now, and the kernel asks again from here (or gets the error, at the
                // first entry it asked for).
                Err(e) if next == offset + 1 => return Err(e),
                Err(_) => return Ok(ControlFlow::Break(())),
            };
            if reply.add(next, name, &ttl, &attr) {
                // Not sent: the reference just counted is not the kernel's.
                self.nodes.forget(attr.ino.0, 1);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        })
    }

    /// The one walk of both listings: offers `add` each entry from `offset` on, with the
    /// offset of the entry after it (index + 1), until `add` breaks or fails; its error is
    /// the walk's.
    fn walk(
        &self,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let dir = self.dir_handle(fh)?;
        let entries = self.entries(&dir, offset)?;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if add(i as u64 + 1, e)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The folder's entries (index + 1 is each one's offset); offset 0 (opendir, rewinddir)
    /// reads the folder afresh.
    fn entries<'d>(
        &self,
        dir: &'d DirHandle,
        offset: u64,
    ) -> Result<MutexGuard<'d, Vec<DirEntry>>> {
        let mut entries = lock(&dir.entries);
        if offset == 0 {
            *entries = read_dir(dir.fd.as_fd()).map_err(errno)?;
            entries.retain(|e| !self.hidden(dir.ino, e.name()));
            // The numbers stat shows (`node`): SOURCE's, but 1 for the root.
            for e in entries.iter_mut() {
                e.ino = self.nodes.id_for((dir.dev, e.ino));
            }
        }
        Ok(entries)
    }
}

/// Where READDIR's entries go (fuser's reply, or a ring entry's payload, `wire`); `add`
/// says whether the reply was already full (the entry not added).
pub(super) trait DirSink {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool;
}

/// Where READDIRPLUS's entries go; `attr.ino` is the entry's node.
pub(super) trait DirPlusSink {
    fn add(&mut self, offset: u64, name: &OsStr, ttl: &Duration, attr: &FileAttr) -> bool;
}

impl DirSink for ReplyDirectory {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        ReplyDirectory::add(self, ino, offset, kind, name)
    }
}

impl DirPlusSink for ReplyDirectoryPlus {
    fn add(&mut self, offset: u64, name: &OsStr, ttl: &Duration, attr: &FileAttr) -> bool {
        ReplyDirectoryPlus::add(self, attr.ino, offset, name, ttl, attr, Generation(0))
    }
}

fn stop_if(full: bool) -> ControlFlow<()> {
    if full {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

fn read_dir(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<DirEntry>> {
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

fn dirent_kind(t: rustix::fs::FileType) -> FileType {
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

//! The parallel walker: every folder is a rayon task, and so is every slice of a large
//! folder's other entries, stolen by whichever core is free.
//!
//! A task holds its parent's descriptor and the folder's name, opens the folder relative to
//! the parent (no symlinks, no other filesystem unless asked), acts on it through that
//! descriptor, lists it, and hands its subfolders on as new tasks. Every other entry is
//! opened O_PATH|O_NOFOLLOW, stat'ed and chowned through the same descriptor, so what is
//! changed is exactly what was examined, whatever happens to the names meanwhile; where
//! io_uring is available the opens and closes go in batches of 64, one syscall each
//! (`sys::batch`), the stat and the chown stay one syscall each per entry. The one
//! shortcut: after an entry that needed nothing, the next is first stat'ed by name, and if
//! it needs nothing either that is all (one syscall instead of three); anything to change,
//! skip or report is still opened and examined as above. Open descriptors stay bounded by
//! the folders that still have work pending.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FileType, RawDir};

use super::{Action, Policy, Skip, decide};
use crate::sys::batch;
use crate::sys::fs::{self as sysfs, Inode};

/// Counters, shared by all workers.
#[derive(Debug, Default)]
pub struct Tally {
    pub entries: AtomicU64,
    pub changed: AtomicU64,
    pub fine: AtomicU64,
    pub hard_linked: AtomicU64,
    pub other_filesystem: AtomicU64,
    pub errors: AtomicU64,
}

/// Counts of one folder's entries, added to the [`Tally`] once.
#[derive(Default)]
struct Counts {
    entries: u64,
    changed: u64,
    fine: u64,
}

impl Counts {
    fn add_to(&self, tally: &Tally) {
        tally.entries.fetch_add(self.entries, Ordering::Relaxed);
        tally.changed.fetch_add(self.changed, Ordering::Relaxed);
        tally.fine.fetch_add(self.fine, Ordering::Relaxed);
    }
}

/// How [`Walk::leaf`] first looks at an entry, guessed from the entry before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Examine {
    /// One stat by name (fstatat): enough for an entry that needs nothing.
    ByName,
    /// Open it O_PATH and stat the descriptor: what acting needs, with no stat beforehand.
    ByDescriptor,
}

/// One walk over one tree.
pub struct Walk<'a> {
    policy: &'a Policy,
    /// The device of the tree's top: entries elsewhere are other filesystems.
    dev: u64,
    pub tally: &'a Tally,
    /// Where each problem line goes (stderr, or the agent's answer).
    report: &'a Reporter<'a>,
}

/// Takes one problem line (a skip or an error, with its path).
pub type Reporter<'r> = dyn Fn(&str) + Sync + 'r;

impl<'a> Walk<'a> {
    /// Walks the tree whose top folder is `top` (already opened), the top included.
    pub fn run(
        policy: &'a Policy,
        tally: &'a Tally,
        report: &'a Reporter<'a>,
        top: OwnedFd,
        path: &Path,
    ) -> io::Result<()> {
        let inode = sysfs::stat(top.as_fd())?;
        let walk = Walk {
            policy,
            dev: inode.dev,
            tally,
            report,
        };
        let mut counts = Counts {
            entries: 1,
            ..Counts::default()
        };
        walk.act(top.as_fd(), inode, &|| path.to_path_buf(), &mut counts);
        counts.add_to(tally);
        let top = Arc::new(top);
        rayon::scope(|scope| walk.list(scope, &top, path));
        Ok(())
    }

    /// Lists folder `dir` and works on its entries; subfolders become tasks, and so do
    /// slices of a large folder's other entries.
    fn list<'s>(&'s self, scope: &rayon::Scope<'s>, dir: &Arc<OwnedFd>, path: &Path) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 32 * 1024];
        let mut entries = RawDir::new(dir.as_fd(), &mut buf);
        let mut leaves = Leaves::default();
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.error(path, "listing", e.into());
                    break;
                }
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if entry.file_type() == FileType::Directory {
                let parent = Arc::clone(dir);
                let name = name.to_owned();
                let child = path.join(OsStr::from_bytes(name.as_bytes()));
                scope.spawn(move |scope| self.folder(scope, &parent, &name, &child));
            } else {
                leaves.push(name);
                if leaves.len() == Leaves::BATCH {
                    self.share_out(scope, dir, &leaves, path);
                    leaves.clear();
                }
            }
        }
        self.share_out(scope, dir, &leaves, path);
    }

    /// Works on a batch of `dir`'s entries in slices that other cores may take (one folder
    /// of 100,000 files would otherwise keep one core busy while the others idle), and
    /// returns when all are done, so that listing goes no further ahead of the work than a
    /// batch.
    fn share_out<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        dir: &Arc<OwnedFd>,
        leaves: &Leaves,
        path: &Path,
    ) {
        if leaves.slices() <= 1 {
            return self.leaves(scope, dir, leaves, 0, path);
        }
        rayon::scope(|slices| {
            for slice in 1..leaves.slices() {
                slices.spawn(move |_| self.leaves(scope, dir, leaves, slice, path));
            }
            self.leaves(scope, dir, leaves, 0, path);
        });
    }

    /// Works on slice `slice` of `leaves`, entries of `dir`.
    fn leaves<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        dir: &Arc<OwnedFd>,
        leaves: &Leaves,
        slice: usize,
        path: &Path,
    ) {
        // Counted here and added once per slice: shared counters bumped per entry would
        // bounce a cache line between the cores on every file.
        let mut counts = Counts::default();
        // Entries of one folder tend to be alike: all root's after a container wrote them,
        // or nearly all fine when a fix runs again.
        let mut examine = Examine::ByDescriptor;
        let names: Vec<&CStr> = leaves.slice(slice).collect();
        batch::with_thread_batch(|batch| {
            let (mut fds, mut opened) = (Vec::new(), Vec::new());
            let mut rest = &names[..];
            while let Some((&name, after)) = rest.split_first() {
                if examine == Examine::ByName || !batch.has_ring() {
                    self.entry(scope, dir, name, path, &mut counts, &mut examine);
                    rest = after;
                    continue;
                }
                // Open a batch at once, then examine and act on each through its
                // descriptor as `leaf` does, then close them at once.
                let (chunk, after) = rest.split_at(rest.len().min(batch::SIZE));
                batch.open_entries(dir.as_fd(), chunk, &mut fds);
                for (&name, fd) in chunk.iter().zip(fds.drain(..)) {
                    let fd = match fd {
                        Ok(fd) => fd,
                        Err(e) => {
                            self.open_failed(path, name, e);
                            continue;
                        }
                    };
                    let kind = self.examined(fd.as_fd(), name, path, &mut counts, &mut examine);
                    if kind == Some(FileType::Directory) {
                        self.spawn_folder(scope, dir, name, path);
                    }
                    opened.push(fd);
                }
                batch.close_all(&mut opened);
                rest = after;
            }
        });
        counts.add_to(self.tally);
    }

    /// A subfolder: open it safely, act on it, list it.
    fn folder<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        parent: &Arc<OwnedFd>,
        name: &CString,
        path: &Path,
    ) {
        self.tally.entries.fetch_add(1, Ordering::Relaxed);
        match sysfs::open_dir(parent.as_fd(), name, self.policy.cross_mounts) {
            Ok(dir) => {
                let inode = match sysfs::stat(dir.as_fd()) {
                    Ok(inode) => inode,
                    Err(e) => return self.error(path, "reading", e),
                };
                if inode.dev != self.dev && !self.policy.cross_mounts {
                    return self.skip(path, Skip::OtherFilesystem);
                }
                let mut counts = Counts::default();
                self.act(dir.as_fd(), inode, &|| path.to_path_buf(), &mut counts);
                counts.add_to(self.tally);
                self.list(scope, &Arc::new(dir), path);
            }
            // Swapped for a symlink or a file since it was listed: it is that now.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                self.tally.entries.fetch_sub(1, Ordering::Relaxed);
                let parent_path = path.parent().unwrap_or(path);
                let mut counts = Counts::default();
                let mut examine = Examine::ByDescriptor;
                self.leaf(parent.as_fd(), name, parent_path, &mut counts, &mut examine);
                counts.add_to(self.tally);
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                self.skip(path, Skip::OtherFilesystem)
            }
            // Gone since it was listed: nothing to do.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => self.error(path, "opening", e),
        }
    }

    /// A listed entry that is not a folder (or whose type the listing did not say).
    fn entry<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        dir: &Arc<OwnedFd>,
        name: &CStr,
        path: &Path,
        counts: &mut Counts,
        examine: &mut Examine,
    ) {
        if self.leaf(dir.as_fd(), name, path, counts, examine) == Some(FileType::Directory) {
            self.spawn_folder(scope, dir, name, path);
        }
    }

    /// An entry listed as a non-folder that is a folder after all (a filesystem without
    /// d_type, or swapped in): walk it.
    fn spawn_folder<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        dir: &Arc<OwnedFd>,
        name: &CStr,
        path: &Path,
    ) {
        let (parent, name) = (Arc::clone(dir), name.to_owned());
        let child = path.join(OsStr::from_bytes(name.as_bytes()));
        scope.spawn(move |scope| self.folder(scope, &parent, &name, &child));
    }

    /// Opens `name` without following or opening it, and acts on that very inode. Returns
    /// its type when it turned out to be a folder (not acted on here).
    ///
    /// An entry that needs nothing is done with one stat by name when `examine` says so:
    /// nothing is changed on the strength of that stat, so a swap after it can only make
    /// the walk miss a change, as a swap after the walk would.
    fn leaf(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        dir_path: &Path,
        counts: &mut Counts,
        examine: &mut Examine,
    ) -> Option<FileType> {
        if *examine == Examine::ByName {
            match sysfs::stat_at(dir, name) {
                Ok(inode) if inode.kind == FileType::Directory => {
                    return Some(FileType::Directory);
                }
                Ok(inode)
                    if (inode.dev == self.dev || self.policy.cross_mounts)
                        && decide(self.policy, &inode) == Action::Fine =>
                {
                    counts.entries += 1;
                    counts.fine += 1;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                // To act on, to skip or to report: through its descriptor, as below.
                Ok(_) | Err(_) => *examine = Examine::ByDescriptor,
            }
        }
        match sysfs::open_entry(dir, name) {
            Ok(fd) => self.examined(fd.as_fd(), name, dir_path, counts, examine),
            Err(e) => {
                self.open_failed(dir_path, name, e);
                None
            }
        }
    }

    /// An entry that could not be opened: gone since it was listed (nothing to do), or an
    /// error to report.
    fn open_failed(&self, dir_path: &Path, name: &CStr, e: io::Error) {
        if e.kind() != io::ErrorKind::NotFound {
            let path = dir_path.join(OsStr::from_bytes(name.to_bytes()));
            self.error(&path, "opening", e);
        }
    }

    /// The rest of [`Walk::leaf`], on the entry opened as `fd`: examines it through the
    /// descriptor and acts on that very inode.
    fn examined(
        &self,
        fd: BorrowedFd<'_>,
        name: &CStr,
        dir_path: &Path,
        counts: &mut Counts,
        examine: &mut Examine,
    ) -> Option<FileType> {
        let path = || dir_path.join(OsStr::from_bytes(name.to_bytes()));
        let inode = match sysfs::stat(fd) {
            Ok(inode) => inode,
            Err(e) => {
                self.error(&path(), "reading", e);
                return None;
            }
        };
        if inode.kind == FileType::Directory {
            return Some(FileType::Directory);
        }
        counts.entries += 1;
        if inode.dev != self.dev && !self.policy.cross_mounts {
            // A file bind-mounted over an entry.
            self.skip(&path(), Skip::OtherFilesystem);
            return None;
        }
        let action = self.act(fd, inode, &path, counts);
        *examine = if action == Action::Fine {
            Examine::ByName
        } else {
            Examine::ByDescriptor
        };
        None
    }

    /// Applies the policy to one inode, through its descriptor, and says what it was.
    /// The path is built only if a message needs it.
    fn act(
        &self,
        fd: BorrowedFd<'_>,
        inode: Inode,
        path: &dyn Fn() -> PathBuf,
        counts: &mut Counts,
    ) -> Action {
        let action = decide(self.policy, &inode);
        match action {
            Action::Fine => counts.fine += 1,
            Action::Skip(reason) => self.skip(&path(), reason),
            Action::Chown { uid, gid } => {
                if !self.policy.dry_run
                    && let Err(e) = sysfs::chown(fd, uid, gid)
                {
                    self.error(&path(), "changing the owner of", e);
                    return action;
                }
                counts.changed += 1;
            }
        }
        action
    }

    fn skip(&self, path: &Path, reason: Skip) {
        let counter = match reason {
            Skip::HardLinked(_) => &self.tally.hard_linked,
            Skip::OtherFilesystem => &self.tally.other_filesystem,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (self.report)(&format!("skipped {}: {reason}", quoted(path)));
    }

    fn error(&self, path: &Path, what: &str, e: io::Error) {
        self.tally.errors.fetch_add(1, Ordering::Relaxed);
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            " (not readable by you)"
        } else {
            ""
        };
        (self.report)(&format!("error {what} {}: {e}{hint}", quoted(path)));
    }
}

/// Entries of a folder other than its subfolders, listed before they are worked on so that
/// a large folder can be shared out. The names are copied out of the listing buffer into one
/// allocation, not one each.
#[derive(Default)]
struct Leaves {
    /// The names, each ending in its NUL.
    names: Vec<u8>,
    /// Where each name starts in `names`.
    starts: Vec<usize>,
}

impl Leaves {
    /// Entries per task when a folder is shared out among the cores (about 2 ms of work).
    const PER_TASK: usize = 256;
    /// Entries listed before they are worked on: bounds the memory a huge folder takes.
    const BATCH: usize = 64 * 1024;

    fn push(&mut self, name: &CStr) {
        self.starts.push(self.names.len());
        self.names.extend_from_slice(name.to_bytes_with_nul());
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn clear(&mut self) {
        self.names.clear();
        self.starts.clear();
    }

    fn slices(&self) -> usize {
        self.len().div_ceil(Self::PER_TASK)
    }

    /// The names of slice `i`.
    fn slice(&self, i: usize) -> impl Iterator<Item = &CStr> {
        let start = i * Self::PER_TASK;
        let end = (start + Self::PER_TASK).min(self.len());
        self.starts[start..end].iter().map(|&at| {
            CStr::from_bytes_until_nul(&self.names[at..]).expect("each name ends in its NUL")
        })
    }
}

/// A path for a message: names may hold newlines or invalid UTF-8, which must not break the
/// one-line-per-problem output.
pub fn quoted(path: &Path) -> String {
    format!("{:?}", path.as_os_str())
        .trim_matches('"')
        .to_string()
}

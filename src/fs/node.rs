//! The inode table: what each FUSE node id stands for on SOURCE.
//!
//! Nodes are reached through `O_PATH` descriptors, so every operation is an `*at()` call
//! relative to a descriptor: no path is ever rebuilt (no PATH_MAX limit, no race with
//! renames elsewhere in the tree). Nodes hold one while descriptors are within budget; past
//! it the oldest are closed and reopened on demand from the folder and name they were last
//! seen under (the folder itself reopened the same way if need be), checked against their
//! inode number and birth time. The root, and a node whose name is gone (unlinked, renamed
//! over), keep theirs: they could not be found again. So the server needs far fewer
//! descriptors than the kernel caches inodes.
//!
//! Node ids are SOURCE's inode numbers where they can be (so `st_ino` is stable across
//! forget and lookup, as tar, git and rsync expect); the root is 1 as FUSE requires, and
//! objects of other filesystems mounted inside SOURCE get ids from a high range, remembered
//! for the life of the mount.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sys::fuse::BackingFile;
use rustix::fs::{Mode, OFlags};

/// The FUSE root's id.
pub const ROOT: u64 = 1;

/// First id given to objects of other filesystems (and SOURCE inodes that would clash).
const FOREIGN_BASE: u64 = 1 << 63;

/// (st_dev, st_ino) of a SOURCE object.
pub type Key = (u64, u64);

#[derive(Debug)]
pub struct Node {
    pub key: Key,
    place: Mutex<Place>,
    /// Passthrough state: one backing file per inode while any passthrough handle is open
    /// (the kernel refuses a second, different backing file for an inode).
    pub io: Mutex<Io>,
}

/// Where a node is: its descriptor if held, and the name it was last seen under.
#[derive(Debug)]
struct Place {
    fd: Option<Arc<OwnedFd>>,
    /// Birth time, read when the descriptor is first closed (and checked at each reopen): an
    /// inode number alone may be reused by the time the name is opened again.
    born: Birth,
    /// (parent id, name); None once the name is gone, which pins `fd`.
    name: Option<(u64, CString)>,
}

/// A node's birth time: not read yet, or read (`None` where the filesystem keeps none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Birth {
    Unread,
    Read(Option<(i64, u32)>),
}

#[derive(Debug, Default)]
pub struct Io {
    pub backing: Option<Backing>,
}

#[derive(Debug)]
pub struct Backing {
    pub file: BackingFile,
    pub opens: u32,
}

#[derive(Debug)]
struct Entry {
    node: Arc<Node>,
    lookups: u64,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<u64, Entry>,
    foreign: HashMap<Key, u64>,
}

#[derive(Debug)]
pub struct Table {
    root_key: Key,
    inner: Mutex<Inner>,
    /// Nodes holding a descriptor, oldest first (ids may repeat or be stale).
    held: Mutex<VecDeque<u64>>,
    budget: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// `budget`: how many nodes may hold a descriptor at once.
    pub fn new(root: OwnedFd, root_key: Key, budget: usize) -> Table {
        let mut inner = Inner::default();
        let node = Arc::new(Node {
            key: root_key,
            place: Mutex::new(Place {
                fd: Some(Arc::new(root)),
                born: Birth::Unread,
                name: None,
            }),
            io: Mutex::new(Io::default()),
        });
        // The root is never forgotten: one lookup that no FORGET pays back.
        inner.nodes.insert(ROOT, Entry { node, lookups: 1 });
        Table {
            root_key,
            inner: Mutex::new(inner),
            held: Mutex::new(VecDeque::new()),
            budget: budget.max(16),
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        lock(&self.inner)
            .nodes
            .get(&id)
            .map(|e| Arc::clone(&e.node))
    }

    /// The known node for a SOURCE object, if the kernel has it.
    pub fn by_key(&self, key: Key) -> Option<Arc<Node>> {
        let id = self.id_for(key);
        self.get(id)
    }

    /// Counts one kernel lookup of the object `fd` (`key`), found as `name` in `parent`, and
    /// returns its id. A node already known keeps its descriptor and learns the name.
    pub fn remember(&self, fd: OwnedFd, key: Key, parent: u64, name: &OsStr) -> u64 {
        let name = CString::new(name.as_bytes()).ok().map(|n| (parent, n));
        let mut inner = lock(&self.inner);
        let id = self.id_of(&mut inner, key);
        let fresh = match inner.nodes.get_mut(&id) {
            Some(entry) => {
                entry.lookups += 1;
                let mut place = lock(&entry.node.place);
                if name.is_some() {
                    place.name = name;
                }
                if place.fd.is_none() {
                    place.fd = Some(Arc::new(fd));
                    // Found by name again, maybe a new object with the same inode number.
                    place.born = Birth::Unread;
                    true
                } else {
                    false
                }
            }
            None => {
                let node = Arc::new(Node {
                    key,
                    place: Mutex::new(Place {
                        fd: Some(Arc::new(fd)),
                        born: Birth::Unread,
                        name,
                    }),
                    io: Mutex::new(Io::default()),
                });
                inner.nodes.insert(id, Entry { node, lookups: 1 });
                true
            }
        };
        drop(inner);
        if fresh {
            self.held(id);
        }
        id
    }

    /// Counts one kernel lookup of the known object `key`, just found by name as `name` in
    /// `parent` with birth time `born`, without a descriptor of it: only where it is surely
    /// that node's object (the node holds a descriptor, so its inode number cannot have been
    /// given to another since, or its birth time is the one recorded). None where it is not
    /// known or may be another object: open it and `remember` it.
    pub fn recount(
        &self,
        key: Key,
        born: Option<(i64, u32)>,
        parent: u64,
        name: &OsStr,
    ) -> Option<u64> {
        let mut inner = lock(&self.inner);
        let id = self.id_of(&mut inner, key);
        let entry = inner.nodes.get_mut(&id)?;
        let mut place = lock(&entry.node.place);
        if place.fd.is_none() && place.born != Birth::Read(born) {
            return None;
        }
        // Mostly the name it had: no allocation then.
        let known = place.name.as_ref().map(|(p, n)| (*p, n.as_bytes()));
        if known != Some((parent, name.as_bytes())) {
            place.name = Some((parent, CString::new(name.as_bytes()).ok()?));
        }
        drop(place);
        entry.lookups += 1;
        Some(id)
    }

    /// Every known node with the name it was last seen under: (id, parent id, name).
    pub fn names(&self) -> Vec<(u64, u64, CString)> {
        let inner = lock(&self.inner);
        inner
            .nodes
            .iter()
            .filter_map(|(id, entry)| {
                let place = lock(&entry.node.place);
                let (parent, name) = place.name.clone()?;
                Some((*id, parent, name))
            })
            .collect()
    }

    /// The kernel dropped `n` lookups of `id`; at zero the node and its descriptor go.
    pub fn forget(&self, id: u64, n: u64) {
        let gone = {
            let mut inner = lock(&self.inner);
            match inner.nodes.get_mut(&id) {
                Some(entry) => {
                    entry.lookups = entry.lookups.saturating_sub(n);
                    if entry.lookups == 0 && id != ROOT {
                        inner.nodes.remove(&id)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        // Closed outside the lock: the last descriptor of an unlinked file frees it on
        // SOURCE (an ext4 mounted with `discard` waits for the device there), and every
        // request needs the table meanwhile.
        drop(gone);
    }

    /// The node's `O_PATH` descriptor, reopened from its folder and name if it was closed.
    pub fn fd(&self, node: &Node) -> io::Result<Arc<OwnedFd>> {
        let (parent, name, born) = {
            let place = lock(&node.place);
            if let Some(fd) = &place.fd {
                return Ok(Arc::clone(fd));
            }
            match &place.name {
                Some((parent, name)) => (*parent, name.clone(), place.born),
                None => return Err(io::Error::from_raw_os_error(libc::ESTALE)),
            }
        };
        let parent = self
            .get(parent)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let dir = self.fd(&parent)?;
        let fd = rustix::fs::openat(
            &*dir,
            name.as_c_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // One statx for both checks (and the birth time stays known for the next close).
        let (key, now_born) = identity(&fd)?;
        if key != node.key || Birth::Read(now_born) != born {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let fd = Arc::new(fd);
        let mut place = lock(&node.place);
        let fd = Arc::clone(place.fd.get_or_insert(fd));
        drop(place);
        self.held(self.id_for(node.key));
        Ok(fd)
    }

    /// Where node `id` is, relative to the root, from the names the nodes were last seen
    /// under; `None` where a name on the way is gone.
    pub fn path(&self, id: u64) -> Option<std::path::PathBuf> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut names = Vec::new();
        let mut id = id;
        while id != ROOT {
            let node = self.get(id)?;
            let place = lock(&node.place);
            let (parent, name) = place.name.as_ref()?;
            names.push(OsStr::from_bytes(name.as_bytes()).to_owned());
            id = *parent;
            if names.len() > 4096 {
                return None; // a loop of stale names
            }
        }
        Some(names.iter().rev().collect())
    }

    /// `node`'s name (in `parent`) has moved to `to`: remember the new one.
    pub fn renamed(&self, node: &Node, to: (u64, &OsStr)) {
        if let Ok(name) = CString::new(to.1.as_bytes()) {
            lock(&node.place).name = Some((to.0, name));
        }
    }

    /// `node` is about to lose its name (unlink, rename over it): hold its descriptor from now
    /// on, since it could not be found again.
    pub fn pin(&self, node: &Node) -> io::Result<()> {
        self.fd(node)?;
        lock(&node.place).name = None;
        Ok(())
    }

    /// A node holds a descriptor: past the budget, close the oldest ones that can be found
    /// again by name.
    fn held(&self, id: u64) {
        let mut held = lock(&self.held);
        held.push_back(id);
        let mut tries = held.len();
        while held.len() > self.budget && tries > 0 {
            tries -= 1;
            let Some(old) = held.pop_front() else { break };
            let Some(node) = self.get(old) else { continue };
            let mut place = lock(&node.place);
            if place.name.is_some() {
                let fd = place.fd.take();
                if let Some(fd) = &fd
                    && place.born == Birth::Unread
                {
                    place.born = Birth::Read(birth(fd));
                }
            } else if place.fd.is_some() {
                held.push_back(old); // pinned: keep it counted
            }
        }
    }

    /// The id the mount shows for `key` (also its `st_ino`).
    pub fn id_for(&self, key: Key) -> u64 {
        let mut inner = lock(&self.inner);
        self.id_of(&mut inner, key)
    }

    fn id_of(&self, inner: &mut Inner, key: Key) -> u64 {
        if key == self.root_key {
            return ROOT;
        }
        let (dev, ino) = key;
        if dev == self.root_key.0 && ino > ROOT && ino < FOREIGN_BASE {
            return ino;
        }
        let next = FOREIGN_BASE + inner.foreign.len() as u64;
        *inner.foreign.entry(key).or_insert(next)
    }
}

/// The object's key and birth time (where the filesystem keeps one), in one statx.
fn identity(fd: &OwnedFd) -> io::Result<(Key, Option<(i64, u32)>)> {
    use rustix::fs::StatxFlags;
    let stx = rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        StatxFlags::INO | StatxFlags::BTIME,
    )?;
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    let born = (stx.stx_mask & StatxFlags::BTIME.bits() != 0)
        .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec));
    Ok(((dev, stx.stx_ino), born))
}

/// The object's birth time, where the filesystem keeps one.
fn birth(fd: &OwnedFd) -> Option<(i64, u32)> {
    let stx = rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BTIME,
    )
    .ok()?;
    (stx.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0)
        .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &str) -> (OwnedFd, Key) {
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty()).unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        (fd, (st.st_dev, st.st_ino))
    }

    #[test]
    fn ids_are_source_inodes_root_is_one_others_are_foreign() {
        let t = Table::new(open("/").0, (5, 2), 100);
        assert_eq!(t.id_for((5, 2)), ROOT);
        assert_eq!(t.id_for((5, 77)), 77);
        assert_eq!(t.id_for((5, 1)), FOREIGN_BASE);
        assert_eq!(t.id_for((6, 77)), FOREIGN_BASE + 1);
        assert_eq!(t.id_for((6, 77)), FOREIGN_BASE + 1);
    }

    #[test]
    fn lookups_are_counted_and_forgotten() {
        let (root, root_key) = open("/");
        let t = Table::new(root, root_key, 100);
        let (fd, key) = open("/etc");
        let id = t.remember(fd, key, ROOT, OsStr::new("etc"));
        let (fd, _) = open("/etc");
        assert_eq!(t.remember(fd, key, ROOT, OsStr::new("etc")), id);
        t.forget(id, 1);
        assert!(t.get(id).is_some());
        t.forget(id, 1);
        assert!(t.get(id).is_none());
        t.forget(ROOT, 10);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn a_known_object_found_by_name_is_counted_without_a_descriptor() {
        let dir = std::env::temp_dir().join(format!("asme-node-recount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (root, root_key) = open(dir.to_str().unwrap());
        let t = Table::new(root, root_key, 16);
        let mut nodes = Vec::new();
        for i in 0..20 {
            let name = format!("f{i}");
            std::fs::write(dir.join(&name), "").unwrap();
            let (fd, key) = open(dir.join(&name).to_str().unwrap());
            nodes.push((t.remember(fd, key, ROOT, OsStr::new(&name)), key));
        }
        let born = |name: &str| {
            let (fd, _) = open(dir.join(name).to_str().unwrap());
            birth(&fd)
        };
        // Holding its descriptor: counted whatever the birth time, and a new name is learned.
        let (id, key) = nodes[19];
        std::fs::hard_link(dir.join("f19"), dir.join("link")).unwrap();
        assert_eq!(t.recount(key, None, ROOT, OsStr::new("link")), Some(id));
        assert_eq!(t.path(id).unwrap(), std::path::Path::new("link"));
        t.forget(id, 1);
        assert!(t.get(id).is_some(), "two lookups counted, one paid back");
        t.forget(id, 1);
        assert!(t.get(id).is_none());
        // Closed past the budget: counted only with the birth time recorded at the close.
        let (id, key) = nodes[0];
        assert!(lock(&t.get(id).unwrap().place).fd.is_none());
        assert_eq!(t.recount(key, Some((1, 2)), ROOT, OsStr::new("f0")), None);
        assert_eq!(t.recount(key, born("f0"), ROOT, OsStr::new("f0")), Some(id));
        // Not known at all.
        std::fs::write(dir.join("new"), "").unwrap();
        let (_, new_key) = open(dir.join("new").to_str().unwrap());
        assert_eq!(
            t.recount(new_key, born("new"), ROOT, OsStr::new("new")),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn past_the_budget_descriptors_are_closed_and_found_again_by_name() {
        let dir = std::env::temp_dir().join(format!("asme-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (root, root_key) = open(dir.to_str().unwrap());
        let t = Table::new(root, root_key, 16);
        let mut nodes = Vec::new();
        for i in 0..40 {
            let name = format!("f{i}");
            std::fs::write(dir.join(&name), "").unwrap();
            let (fd, key) = open(dir.join(&name).to_str().unwrap());
            nodes.push(t.remember(fd, key, ROOT, OsStr::new(&name)));
        }
        let open_now = nodes
            .iter()
            .filter(|id| lock(&t.get(**id).unwrap().place).fd.is_some())
            .count();
        assert_eq!(open_now, 16);
        // The first was closed; it is reopened by name and checked.
        let first = t.get(nodes[0]).unwrap();
        assert!(t.fd(&first).is_ok());
        // Replaced under the same name: not the same object any more.
        let second = t.get(nodes[1]).unwrap();
        assert!(lock(&second.place).fd.is_none(), "closed past the budget");
        std::fs::remove_file(dir.join("f1")).unwrap();
        std::fs::write(dir.join("f1"), "new").unwrap();
        assert_eq!(
            t.fd(&second).unwrap_err().raw_os_error(),
            Some(libc::ESTALE)
        );
        // A pinned node keeps its descriptor past its name.
        let third = t.get(nodes[2]).unwrap();
        t.pin(&third).unwrap();
        std::fs::remove_file(dir.join("f2")).unwrap();
        for _ in 0..3 {
            t.held(nodes[39]);
        }
        assert!(t.fd(&third).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

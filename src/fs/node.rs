//! The inode table: what each FUSE node id stands for on SOURCE.
//!
//! Every node holds an `O_PATH` descriptor of its SOURCE object, so every operation is an
//! `*at()` call relative to a descriptor: no path is ever rebuilt (no PATH_MAX limit, no race
//! with renames), and a held descriptor pins the inode, so its number cannot be reused while
//! the kernel still knows the node.
//!
//! Node ids are SOURCE's inode numbers where they can be (so `st_ino` is stable across
//! forget and lookup, as tar, git and rsync expect); the root is 1 as FUSE requires, and
//! objects of other filesystems mounted inside SOURCE get ids from a high range, remembered
//! for the life of the mount.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::BackingId;

/// The FUSE root's id.
pub const ROOT: u64 = 1;

/// First id given to objects of other filesystems (and SOURCE inodes that would clash).
const FOREIGN_BASE: u64 = 1 << 63;

/// (st_dev, st_ino) of a SOURCE object.
pub type Key = (u64, u64);

#[derive(Debug)]
pub struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the object.
    pub fd: OwnedFd,
    /// Passthrough state: one backing file per inode while any passthrough handle is open
    /// (the kernel refuses a second, different backing file for an inode).
    pub backing: Mutex<Option<Backing>>,
}

#[derive(Debug)]
pub struct Backing {
    pub id: BackingId,
    pub opens: u32,
    pub writable: bool,
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
}

impl Table {
    pub fn new(root: OwnedFd, root_key: Key) -> Table {
        let mut inner = Inner::default();
        let node = Arc::new(Node {
            fd: root,
            backing: Mutex::new(None),
        });
        // The root is never forgotten: one lookup that no FORGET pays back.
        inner.nodes.insert(ROOT, Entry { node, lookups: 1 });
        Table {
            root_key,
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.lock().nodes.get(&id).map(|e| Arc::clone(&e.node))
    }

    /// Counts one kernel lookup of the object `fd` (whose key is `key`) and returns its id.
    /// A node already known keeps its descriptor; `fd` is then dropped.
    pub fn remember(&self, fd: OwnedFd, key: Key) -> u64 {
        let mut inner = self.lock();
        let id = self.id_of(&mut inner, key);
        match inner.nodes.get_mut(&id) {
            Some(entry) => entry.lookups += 1,
            None => {
                let node = Arc::new(Node {
                    fd,
                    backing: Mutex::new(None),
                });
                inner.nodes.insert(id, Entry { node, lookups: 1 });
            }
        }
        id
    }

    /// The kernel dropped `n` lookups of `id`; at zero the descriptor is closed.
    pub fn forget(&self, id: u64, n: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.nodes.get_mut(&id) {
            entry.lookups = entry.lookups.saturating_sub(n);
            if entry.lookups == 0 && id != ROOT {
                inner.nodes.remove(&id);
            }
        }
    }

    /// The id the mount shows for `key` (also its `st_ino`).
    pub fn id_for(&self, key: Key) -> u64 {
        let mut inner = self.lock();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        rustix::fs::open("/", rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap()
    }

    #[test]
    fn ids_are_source_inodes_root_is_one_others_are_foreign() {
        let t = Table::new(fd(), (5, 2));
        assert_eq!(t.id_for((5, 2)), ROOT);
        assert_eq!(t.id_for((5, 77)), 77);
        assert_eq!(t.id_for((5, 1)), FOREIGN_BASE);
        assert_eq!(t.id_for((6, 77)), FOREIGN_BASE + 1);
        assert_eq!(t.id_for((6, 77)), FOREIGN_BASE + 1);
    }

    #[test]
    fn lookups_are_counted_and_forgotten() {
        let t = Table::new(fd(), (5, 2));
        assert_eq!(t.remember(fd(), (5, 9)), 9);
        assert_eq!(t.remember(fd(), (5, 9)), 9);
        t.forget(9, 1);
        assert!(t.get(9).is_some());
        t.forget(9, 1);
        assert!(t.get(9).is_none());
        t.forget(ROOT, 10);
        assert!(t.get(ROOT).is_some());
    }
}

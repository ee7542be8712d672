//! `asme mount`: SOURCE shown through FUSE with its owners mapped (what bindfs does).
//!
//! The server is a thin translation layer: every request becomes the same system call on
//! SOURCE, made relative to a held descriptor (`node`), with uids and gids translated by the
//! map. Permission checks are the kernel's (`default_permissions`, on the mapped attributes),
//! so nobody gains access they lack on SOURCE. Where the kernel offers it and the server is
//! root, reads and writes of regular files bypass the server (FUSE passthrough).
//!
//! Split as virtiofsd splits protocol from filesystem: `server` decodes each FUSE request
//! into one call on `MappedFs` and sends the reply (`ring` and `wire` do the same for requests
//! that come over io_uring, where the kernel offers it); the filesystem is `names` (lookup and the
//! namespace operations), `attr` (attributes, ownership, xattrs), `handle` (open files and
//! passthrough), `listing` (open folders), `node` (the inode table) and `map` (the owner map).
//! `mount` and `check` set the session up and take it down. This file owns the shared state
//! and the few helpers every part uses.

mod attr;
pub mod check;
mod handle;
mod listing;
pub mod map;
pub mod mount;
mod names;
mod node;
mod options;
pub mod owners;
mod ring;
mod server;
mod watch;
mod wire;

use std::ffi::{CString, OsStr};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{Errno, INodeNo};
use rustix::fs::{Mode, OFlags, Stat};
use rustix::io::Errno as SysErrno;

use listing::Dirs;
use map::OwnerMap;
use node::{Key, Node, Table};

/// How the mount behaves, from `asme mount`'s options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub map: OwnerMap,
    /// How long the kernel may trust names and attributes it was given. Changes made through
    /// the mount are seen at once whatever this is; it only delays changes made to SOURCE
    /// directly.
    pub ttl: Duration,
    /// Use FUSE passthrough for file data when the kernel offers it (needs root).
    pub passthrough: bool,
    /// Take requests over io_uring when the kernel offers it (`ring`).
    pub uring: bool,
    /// How long each io_uring queue looks for its next request before it sleeps (`ring`).
    pub poll: Duration,
    /// Keep SOURCE's files the owner's and record the owners the mount shows (`owners`).
    pub recorded: Option<owners::Recorded>,
    /// Watch SOURCE and trust names and attributes for `watch::WATCHED_TTL` while the watch
    /// holds (`watch`); off when a timeout was asked for.
    pub watch: bool,
}

/// The watch and the inode table, for the thread that turns SOURCE's changes into
/// invalidations.
pub type WatchParts = (Arc<watch::Watch>, Arc<Table>);

/// The filesystem served over FUSE.
#[derive(Debug)]
pub struct MappedFs {
    settings: Settings,
    nodes: Arc<Table>,
    /// The watch on SOURCE, where it could be made.
    watch: Option<Arc<watch::Watch>>,
    dirs: Dirs,
    /// Root may give created files to their creator and open backing files.
    as_root: bool,
    /// Set once, at FUSE init, when the kernel accepted passthrough.
    passthrough: AtomicBool,
    /// Set once, at FUSE init, when the kernel agreed to FUSE over io_uring (`ring`).
    uring: AtomicBool,
    /// The session's `/dev/fuse`, once it runs: passthrough registers backing files on it.
    device: OnceLock<Arc<OwnedFd>>,
    /// Recorded owners on a filesystem without `user.` attributes (`owners::Sidecar`).
    sidecar: Option<owners::Sidecar>,
}

type Result<T> = std::result::Result<T, Errno>;

/// Who made a request, as the kernel names them (ids as the mount shows them).
#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: u32,
    gid: u32,
}

impl From<&fuser::Request> for Caller {
    fn from(req: &fuser::Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
        }
    }
}

fn errno(e: SysErrno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

impl MappedFs {
    /// `source` must be an `O_PATH` descriptor of a folder.
    pub fn new(source: OwnedFd, settings: Settings) -> std::io::Result<MappedFs> {
        use std::os::fd::AsFd;
        let st = rustix::fs::fstat(&source)?;
        let sidecar = match settings.recorded {
            Some(_) if !owners::has_user_xattrs(source.as_fd()) => {
                Some(owners::Sidecar::open(source.as_fd())?)
            }
            _ => None,
        };
        let watch = settings
            .watch
            .then(watch::Watch::new)
            .and_then(std::result::Result::ok)
            .map(Arc::new);
        if let Some(watch) = &watch {
            watch.folder(source.as_fd(), node::ROOT);
        }
        Ok(MappedFs {
            sidecar,
            nodes: Arc::new(Table::new(source, key(&st), descriptor_budget())),
            watch,
            settings,
            dirs: Dirs::default(),
            as_root: rustix::process::geteuid().is_root(),
            passthrough: AtomicBool::new(false),
            uring: AtomicBool::new(false),
            device: OnceLock::new(),
        })
    }

    /// What the session's watch thread needs ([`watch::serve`]), if SOURCE is watched.
    pub fn watch_parts(&self) -> Option<WatchParts> {
        Some((self.watch.clone()?, self.nodes.clone()))
    }

    /// The session's device, once it is up (see `device`).
    pub fn set_device(&self, dev: Arc<OwnedFd>) {
        let _ = self.device.set(dev);
    }

    /// Whether the kernel agreed at INIT to take requests over io_uring.
    pub fn uring_agreed(&self) -> bool {
        self.uring.load(Ordering::Relaxed)
    }

    fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// How long the kernel may trust the names and attributes it is given now.
    fn ttl(&self) -> Duration {
        match &self.watch {
            Some(watch) if watch.healthy() => watch::WATCHED_TTL,
            _ => self.settings.ttl,
        }
    }

    /// Watches `fd` (node `id`) if it is a folder, before the kernel learns of it.
    fn watch_if_folder(&self, fd: &OwnedFd, st: &Stat, id: u64) {
        use std::os::fd::AsFd;
        if let Some(watch) = &self.watch
            && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        {
            watch.folder(fd.as_fd(), id);
        }
    }

    fn node(&self, ino: INodeNo) -> Result<Arc<Node>> {
        self.nodes.get(ino.0).ok_or(Errno::ESTALE)
    }

    /// The node's `O_PATH` descriptor (see `node::Table::fd`).
    fn fd(&self, node: &Node) -> Result<Arc<OwnedFd>> {
        self.nodes.fd(node).map_err(Errno::from)
    }

    /// Whether `name` in `parent` is the sidecar of recorded owners, which the mount hides.
    fn hidden(&self, parent: INodeNo, name: &OsStr) -> bool {
        self.sidecar.is_some() && parent.0 == node::ROOT && name == owners::SIDECAR
    }

    /// The node of `ino` and its descriptor.
    fn node_fd(&self, ino: INodeNo) -> Result<(Arc<Node>, Arc<OwnedFd>)> {
        let node = self.node(ino)?;
        let fd = self.fd(&node)?;
        Ok((node, fd))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many files may hold an `O_PATH` descriptor at once: half the open-file limit (the other
/// half is for folders, open handles and the kernel's own), see `node`.
fn descriptor_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (limit / 2).min(1 << 20) as usize
}

fn key(st: &Stat) -> Key {
    (st.st_dev, st.st_ino)
}

/// The `O_PATH` descriptor a node holds: the object itself, never what a symlink names.
fn open_path(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// The magic link of a descriptor: for an `O_PATH` one, the object itself, symlinks included
/// (what calls that refuse `O_PATH` descriptors are given instead).
fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

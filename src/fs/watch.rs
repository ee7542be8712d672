//! Long caching that stays correct: every folder the kernel knows is watched on SOURCE
//! (fanotify), and a change made there by anyone but this server (the user's editor, git
//! on the host, another mount of the same folder) is pushed to the kernel as an
//! invalidation (`FUSE_NOTIFY_INVAL_ENTRY`, `FUSE_NOTIFY_INVAL_INODE`). So names and
//! attributes may be trusted for [`WATCHED_TTL`] instead of a second: a `rm -rf` or a second
//! read of a tree costs no LOOKUP or GETATTR round trip (`bench/README.md`).
//!
//! Changes made through the mount are the kernel's own doing and need no invalidation; they
//! are told apart by the process that made them (this server). If a folder cannot be watched
//! (a filesystem without file handles, the user's mark limit, a folder the user may not
//! read), the watch is given up for the whole mount: everything cached is invalidated and
//! the short timeout returns. An overflowing event queue invalidates everything too.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use rustix::fs::AtFlags;

use super::node::Table;
use super::{key, lock, proc_path};
use crate::sys::watch as fan;

/// How long names and attributes are trusted while SOURCE is watched. Bounded, so that a
/// change the watch could not see (none is known) is seen within a minute.
pub const WATCHED_TTL: Duration = Duration::from_secs(60);

/// How long the event thread gathers a burst of events before acting on them: the longest a
/// change made on SOURCE stays unseen through the mount.
const GATHER: Duration = Duration::from_millis(5);

/// A folder as fanotify names it: its filesystem id and file handle.
type FolderId = ([u8; 8], Vec<u8>);

/// The watch on SOURCE's folders.
#[derive(Debug)]
pub struct Watch {
    group: OwnedFd,
    folders: Mutex<HashMap<FolderId, u64>>,
    healthy: AtomicBool,
    /// Tells the event thread to invalidate everything (the watch was given up).
    give_up: (OwnedFd, OwnedFd),
}

impl Watch {
    pub fn new() -> std::io::Result<Watch> {
        let group = fan::group()?;
        let give_up = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok(Watch {
            group,
            folders: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(true),
            give_up,
        })
    }

    /// Whether long timeouts are safe: every folder the kernel was told of is watched.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Watches the folder `fd` (node `id`) before the kernel is told of it.
    pub fn folder(&self, fd: BorrowedFd<'_>, id: u64) {
        if !self.healthy() {
            return;
        }
        let watched = (|| -> std::io::Result<FolderId> {
            use std::os::fd::AsRawFd;
            fan::mark_folder(self.group.as_fd(), &proc_path(fd.as_raw_fd()), true)?;
            Ok((fan::filesystem_id(fd)?, fan::file_handle(fd)?))
        })();
        match watched {
            Ok(folder) => {
                lock(&self.folders).insert(folder, id);
            }
            Err(_) => {
                // Replies from now on carry the short timeout; the event thread drops what
                // the kernel was told with the long one.
                self.healthy.store(false, Ordering::Release);
                let _ = rustix::io::write(&self.give_up.1, &[1]);
            }
        }
    }
}

/// Serves the watch: turns SOURCE's changes into invalidations until the mount goes.
pub fn serve(watch: Arc<Watch>, nodes: Arc<Table>, notifier: Notifier) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let own = std::process::id() as i32;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            PollFd::new(watch.group.as_fd(), PollFlags::POLLIN),
            PollFd::new(watch.give_up.0.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let (events, given_up) = (ready(&fds[0]), ready(&fds[1]));
        if given_up {
            let _ = rustix::io::read(&watch.give_up.0, &mut [0u8; 16]);
            invalidate_all(&nodes, &notifier);
        }
        if !events {
            continue;
        }
        let Ok(n) = rustix::io::read(&watch.group, &mut buf) else {
            continue;
        };
        // Events come in bursts (a build, a container writing): gathering them for a few
        // milliseconds costs this thread one wake-up per burst instead of one per change,
        // on cores the mount's own requests need.
        std::thread::sleep(GATHER);
        let more = rustix::io::read(&watch.group, &mut buf[n..]).unwrap_or(0);
        let n = n + more;
        for event in parse(&buf[..n]) {
            if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                invalidate_all(&nodes, &notifier);
            } else if event.pid != own {
                let folder = event
                    .folder
                    .and_then(|f| lock(&watch.folders).get(&f).copied());
                if let Some(folder) = folder {
                    invalidate(&nodes, &notifier, folder, &event.name, event.mask);
                }
            }
        }
    }
}

/// What a change to `name` in `folder` (`mask`, fanotify's) makes stale in the kernel: the
/// name itself when names were made, removed or moved; the object's data and attributes when
/// it was written; its attributes alone when they changed. A file written through a
/// passthrough mount is reported too (the writer is the container, not this server): its
/// name stays cached.
fn invalidate(nodes: &Table, notifier: &Notifier, folder: u64, name: &[u8], mask: u64) {
    const NAMES: u64 =
        libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;
    // offset -1: attributes only; 0 with length 0: the data too.
    let offset = if mask & libc::FAN_MODIFY != 0 { 0 } else { -1 };
    if name == b"." || name.is_empty() {
        let _ = notifier.inval_inode(INodeNo(folder), offset, 0);
        return;
    }
    if mask & NAMES != 0 {
        let _ = notifier.inval_entry(INodeNo(folder), OsStr::from_bytes(name));
    }
    let child = nodes
        .get(folder)
        .and_then(|dir| nodes.fd(&dir).ok())
        .and_then(|dir| {
            let st = rustix::fs::statat(&*dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW);
            nodes.by_key(key(&st.ok()?))
        });
    if let Some(child) = child {
        let _ = notifier.inval_inode(INodeNo(nodes.id_for(child.key)), offset, 0);
    }
}

/// Drops every name and attribute the kernel may have cached.
fn invalidate_all(nodes: &Table, notifier: &Notifier) {
    for (id, parent, name) in nodes.names() {
        let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(name.as_bytes()));
        let _ = notifier.inval_inode(INodeNo(id), 0, 0);
    }
}

/// One fanotify event, as far as the watch needs it.
#[derive(Debug, PartialEq, Eq)]
struct Event {
    mask: u64,
    pid: i32,
    folder: Option<FolderId>,
    name: Vec<u8>,
}

/// `FAN_EVENT_INFO_TYPE_DFID_NAME` and `FAN_EVENT_INFO_TYPE_DFID`.
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;

/// The events in what one read(2) of the group returned (`struct fanotify_event_metadata`,
/// then its info records: the folder's fsid and file handle, then the name).
fn parse(buf: &[u8]) -> Vec<Event> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut events = Vec::new();
    let mut at = 0;
    while let Some(len) = u32_at(buf, at).map(|l| l as usize) {
        let Some(event) = buf.get(at..at + len).filter(|_| len >= 24) else {
            break;
        };
        let meta_len = u16_at(event, 6).unwrap_or(24) as usize;
        let mask = event
            .get(8..16)
            .map_or(0, |s| u64::from_ne_bytes(s.try_into().expect("8 bytes")));
        let pid = u32_at(event, 20).unwrap_or(0) as i32;
        let mut parsed = Event {
            mask,
            pid,
            folder: None,
            name: Vec::new(),
        };
        let mut info = meta_len;
        while let (Some(&kind), Some(info_len)) = (event.get(info), u16_at(event, info + 2)) {
            let record = event.get(info..info + info_len as usize).unwrap_or(&[]);
            if (kind == INFO_DFID_NAME || kind == INFO_DFID) && record.len() >= 20 {
                let fsid: [u8; 8] = record[4..12].try_into().expect("8 bytes");
                let bytes = u32_at(record, 12).unwrap_or(0) as usize;
                if let Some(handle) = record.get(16..20 + bytes) {
                    parsed.folder = Some((fsid, handle.to_vec()));
                    if kind == INFO_DFID_NAME {
                        let name = &record[20 + bytes..];
                        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                        parsed.name = name[..end].to_vec();
                    }
                }
            }
            if info_len == 0 {
                break;
            }
            info += info_len as usize;
        }
        events.push(parsed);
        at += len;
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the kernel lays it out: metadata, then one DFID_NAME record.
    fn event(mask: u64, pid: i32, fsid: [u8; 8], handle: &[u8], name: &str) -> Vec<u8> {
        let mut record = vec![INFO_DFID_NAME, 0, 0, 0];
        record.extend_from_slice(&fsid);
        record.extend_from_slice(&((handle.len() - 4) as u32).to_ne_bytes());
        record.extend_from_slice(handle); // the type (4 bytes), then the handle's bytes
        record.extend_from_slice(name.as_bytes());
        record.push(0);
        while record.len() % 4 != 0 {
            record.push(0);
        }
        let record_len = record.len() as u16;
        record[2..4].copy_from_slice(&record_len.to_ne_bytes());
        let mut out = Vec::new();
        out.extend_from_slice(&((24 + record.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&[3, 0]);
        out.extend_from_slice(&24u16.to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&(-1i32).to_ne_bytes());
        out.extend_from_slice(&pid.to_ne_bytes());
        out.extend_from_slice(&record);
        out
    }

    #[test]
    fn events_name_their_folder_and_entry() {
        let handle = [1, 0, 0, 0, 9, 8, 7, 6, 5, 4, 3, 2];
        let fsid = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = event(libc::FAN_CREATE, 42, fsid, &handle, "new-file");
        buf.extend(event(
            libc::FAN_ATTRIB | libc::FAN_ONDIR,
            7,
            fsid,
            &handle,
            ".",
        ));
        let events = parse(&buf);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].mask, libc::FAN_CREATE);
        assert_eq!(events[0].pid, 42);
        assert_eq!(events[0].folder, Some((fsid, handle.to_vec())));
        assert_eq!(events[0].name, b"new-file");
        assert_eq!(events[1].name, b".");
        // A torn or empty buffer is no event, not a panic.
        assert_eq!(parse(&buf[..10]), Vec::new());
        assert_eq!(parse(&[]), Vec::new());
        let overflow = {
            let mut b = event(libc::FAN_Q_OVERFLOW, 0, fsid, &handle, "x");
            b.truncate(24);
            b[0..4].copy_from_slice(&24u32.to_ne_bytes());
            b
        };
        let events = parse(&overflow);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].mask, events[0].folder.clone()),
            (libc::FAN_Q_OVERFLOW, None)
        );
    }
}

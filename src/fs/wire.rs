//! The FUSE wire format of the requests `ring` serves: reading a request's arguments and
//! writing its reply (include/uapi/linux/fuse.h). fuser does this for the `/dev/fuse` loop
//! but keeps it private, so the io_uring queues carry their own; `server` and `ring` call
//! the same `MappedFs` operations with what either decoded.
//!
//! Over io_uring the kernel splits a request in two: the operation's own header
//! (`fuse_open_in`...) in one buffer, everything after it (names, written data) in the
//! payload; a reply's arguments all go in the payload. Fields are native-endian, as the
//! kernel's structs are.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::listing::{DirPlusSink, DirSink};

/// A request's arguments: its header and its payload.
#[derive(Debug, Clone, Copy)]
pub(super) struct Args<'a> {
    pub op: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> Args<'a> {
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.op[at..at + 4].try_into().expect("4 bytes"))
    }

    pub fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.op[at..at + 8].try_into().expect("8 bytes"))
    }

    /// The payload's first NUL-terminated name and what follows it (the kernel always
    /// terminates names; a payload without NUL is malformed).
    pub fn name(&self) -> Option<(&'a OsStr, &'a [u8])> {
        let end = self.payload.iter().position(|&b| b == 0)?;
        Some((
            OsStr::from_bytes(&self.payload[..end]),
            &self.payload[end + 1..],
        ))
    }

    /// Two names in a row (RENAME, SYMLINK).
    pub fn two_names(&self) -> Option<(&'a OsStr, &'a OsStr)> {
        let (first, rest) = self.name()?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some((first, OsStr::from_bytes(&rest[..end])))
    }
}

/// A reply being written into a buffer; `None` from `finish` when it did not fit.
pub(super) struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out {
            buf,
            len: 0,
            overflow: false,
        }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_ne_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_ne_bytes())
    }

    pub fn finish(self) -> Option<usize> {
        (!self.overflow).then_some(self.len)
    }
}

/// `struct fuse_attr`.
fn attr(out: &mut Out<'_>, a: &FileAttr) {
    let (at, mt, ct) = (time(a.atime), time(a.mtime), time(a.ctime));
    out.u64(a.ino.0).u64(a.size).u64(a.blocks);
    out.u64(at.0 as u64).u64(mt.0 as u64).u64(ct.0 as u64);
    out.u32(at.1).u32(mt.1).u32(ct.1);
    out.u32(mode(a))
        .u32(a.nlink)
        .u32(a.uid)
        .u32(a.gid)
        .u32(a.rdev);
    out.u32(a.blksize).u32(a.flags);
}

/// `struct fuse_entry_out` (generation 0: node ids are never reused while known).
pub(super) fn entry(out: &mut Out<'_>, ttl: Duration, a: &FileAttr) {
    out.u64(a.ino.0).u64(0);
    out.u64(ttl.as_secs()).u64(ttl.as_secs());
    out.u32(ttl.subsec_nanos()).u32(ttl.subsec_nanos());
    attr(out, a);
}

/// `struct fuse_attr_out`.
pub(super) fn attr_out(out: &mut Out<'_>, ttl: Duration, a: &FileAttr) {
    out.u64(ttl.as_secs()).u32(ttl.subsec_nanos()).u32(0);
    attr(out, a);
}

/// `struct fuse_open_out`: the handle, FOPEN flags, and the passthrough backing id.
pub(super) fn open_out(out: &mut Out<'_>, fh: u64, flags: u32, backing: Option<u32>) {
    let flags = flags
        | if backing.is_some() {
            FOPEN_PASSTHROUGH
        } else {
            0
        };
    out.u64(fh).u32(flags).u32(backing.unwrap_or(0));
}

const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Seconds and nanoseconds since the epoch, negative seconds before it.
fn time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    }
}

fn mode(a: &FileAttr) -> u32 {
    type_bits(a.kind) | u32::from(a.perm)
}

/// The S_IFMT bits of a file type.
fn type_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// A READDIR or READDIRPLUS reply of at most the size the kernel asked for.
pub(super) struct DirBuf {
    pub data: Vec<u8>,
    max: usize,
}

impl DirBuf {
    pub fn new(max: usize) -> DirBuf {
        DirBuf {
            data: Vec::with_capacity(max.min(64 * 1024)),
            max,
        }
    }

    /// `struct fuse_dirent` and the name, padded to 8 bytes; false when it does not fit.
    fn dirent(&mut self, ino: u64, offset: u64, kind: FileType, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let len = dirent_len(name);
        if self.data.len() + len > self.max {
            return false;
        }
        let dt = type_bits(kind) >> 12; // DT_* is S_IFMT's bits shifted down
        let start = self.data.len();
        self.data.extend_from_slice(&ino.to_ne_bytes());
        self.data.extend_from_slice(&offset.to_ne_bytes());
        self.data
            .extend_from_slice(&(name.len() as u32).to_ne_bytes());
        self.data.extend_from_slice(&dt.to_ne_bytes());
        self.data.extend_from_slice(name);
        self.data.resize(start + len, 0);
        true
    }
}

impl DirSink for DirBuf {
    fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        !self.dirent(ino.0, offset, kind, name)
    }
}

/// `struct fuse_dirent` (24 bytes) with `name`, padded to 8 bytes.
fn dirent_len(name: &[u8]) -> usize {
    (24 + name.len()).next_multiple_of(8)
}

/// `struct fuse_direntplus` is `fuse_entry_out` then the dirent.
const ENTRY_OUT_LEN: usize = 128;

impl DirPlusSink for DirBuf {
    fn add(&mut self, offset: u64, name: &OsStr, ttl: &Duration, a: &FileAttr) -> bool {
        let start = self.data.len();
        // Room for both, checked before anything is written.
        let fits = start + ENTRY_OUT_LEN + dirent_len(name.as_bytes()) <= self.max;
        if !fits {
            return true;
        }
        self.data.resize(start + ENTRY_OUT_LEN, 0);
        let mut out = Out::new(&mut self.data[start..]);
        entry(&mut out, *ttl, a);
        debug_assert_eq!(out.finish(), Some(ENTRY_OUT_LEN));
        !self.dirent(a.ino.0, offset, a.kind, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 5,
            perm: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            ..super::super::attr::placeholder_attr(FileType::RegularFile)
        }
    }

    #[test]
    fn an_entry_is_128_bytes_with_mode_and_ids_in_place() {
        let mut buf = [0u8; 256];
        let mut out = Out::new(&mut buf);
        entry(&mut out, Duration::from_millis(1500), &file(7));
        assert_eq!(out.finish(), Some(128));
        let u32_at = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap());
        assert_eq!(u64_at(0), 7); // nodeid
        assert_eq!(u64_at(16), 1); // entry_valid seconds
        assert_eq!(u32_at(32), 500_000_000); // entry_valid_nsec
        assert_eq!(u64_at(40), 7); // attr.ino
        assert_eq!(u64_at(48), 5); // attr.size
        assert_eq!(u32_at(40 + 60), libc::S_IFREG | 0o644); // attr.mode
        assert_eq!(u32_at(40 + 68), 1000); // attr.uid
        assert_eq!(u32_at(40 + 72), 100); // attr.gid
    }

    #[test]
    fn a_reply_that_does_not_fit_is_refused() {
        let mut buf = [0u8; 100];
        let mut out = Out::new(&mut buf);
        entry(&mut out, Duration::ZERO, &file(1));
        assert_eq!(out.finish(), None);
    }

    #[test]
    fn times_before_the_epoch_count_back_whole_seconds() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(time(t), (-2, 500_000_000));
        assert_eq!(time(UNIX_EPOCH + Duration::from_secs(3)), (3, 0));
    }

    #[test]
    fn dirents_are_padded_and_stop_at_the_size_asked() {
        let mut dir = DirBuf::new(64);
        assert!(!DirSink::add(
            &mut dir,
            INodeNo(3),
            1,
            FileType::Directory,
            OsStr::new("abc")
        ));
        assert_eq!(dir.data.len(), 32);
        assert_eq!(u32::from_ne_bytes(dir.data[20..24].try_into().unwrap()), 4); // DT_DIR
        assert!(!DirSink::add(
            &mut dir,
            INodeNo(4),
            2,
            FileType::RegularFile,
            OsStr::new("x")
        ));
        assert!(DirSink::add(
            &mut dir,
            INodeNo(5),
            3,
            FileType::RegularFile,
            OsStr::new("y")
        ));
        assert_eq!(dir.data.len(), 64);
    }

    #[test]
    fn names_come_nul_terminated() {
        let args = Args {
            op: &[],
            payload: b"old\0new\0",
        };
        let (a, b) = args.two_names().unwrap();
        assert_eq!((a, b), (OsStr::new("old"), OsStr::new("new")));
        assert!(
            Args {
                op: &[],
                payload: b"x"
            }
            .name()
            .is_none()
        );
    }
}

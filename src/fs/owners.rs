//! Recorded owners (`-o record_owners`): every file stays the owner's on SOURCE, and the
//! owner the mount shows (what the container chose: a database's `chown -R postgres`, a
//! service user's new files) is kept beside it, in the extended attribute [`XATTR`].
//!
//! - Shown owner: the attribute's `UID:GID` (ids as the mount shows them), else the map's
//!   view of SOURCE's owner, as without recording.
//! - CHOWN through the mount records the new owner (or removes the record when it is the
//!   default again) and leaves SOURCE's owner alone. The kernel has already checked that the
//!   caller may (`default_permissions`, on the shown owner), and clears set-id bits itself.
//! - What the mount creates is stored as [`Recorded::disk`] and recorded as its creator's.
//! - Only regular files and folders carry `user.` attributes (Linux refuses them elsewhere):
//!   symlinks, devices, fifos and sockets show the default owner, and a chown of one is
//!   accepted and not kept, as on a filesystem that ignores ownership.
//! - The attribute is the server's: the mount neither lists nor lets anyone read, write or
//!   remove it, so a process in the container cannot make its file look like root's.
//!
//! Where SOURCE's filesystem has no `user.` attributes (sshfs over OpenSSH's sftp-server,
//! vboxsf), the records live in [`SIDECAR`], a file at SOURCE's root that the mount hides:
//! owners by path, kept up to date across renames and removals made through the mount
//! (`Sidecar`).
//!
//! Docker Desktop's file sharing on macOS does the same with `com.docker.grpcfuse.ownership`.
//! Used without asme, the folder shows the user's files with their modes: the recorded
//! owners are simply not applied.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags, Stat};
use rustix::io::Errno as SysErrno;

use super::map::OwnerMap;
use super::proc_path;

/// The attribute holding a file's shown owner, `UID:GID`.
pub const XATTR: &str = "user.asme.owner";

/// Recording is on: every file made through the mount is stored as `disk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub disk: (u32, u32),
}

/// Whether `st` may carry a `user.` attribute.
pub fn can_record(st: &Stat) -> bool {
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// The owner the map shows for SOURCE's owner of `st`.
pub fn mapped(map: &OwnerMap, st: &Stat) -> (u32, u32) {
    (
        map.users.to_mount(st.st_uid),
        map.groups.to_mount(st.st_gid),
    )
}

/// The recorded owner of the object behind `fd`, if any (a malformed record counts as none).
pub fn read(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let mut buf = [0u8; 32];
    let n = rustix::fs::getxattr(proc_path(fd.as_raw_fd()), XATTR, &mut buf).ok()?;
    parse(&buf[..n])
}

/// Records `owner` for the object behind `fd`, or removes the record when `owner` is what
/// the map shows anyway.
pub fn write(fd: BorrowedFd<'_>, owner: (u32, u32), default: (u32, u32)) -> rustix::io::Result<()> {
    let path = proc_path(fd.as_raw_fd());
    if owner == default {
        return match rustix::fs::removexattr(&path, XATTR) {
            Err(SysErrno::NODATA) => Ok(()),
            other => other,
        };
    }
    let value = format!("{}:{}", owner.0, owner.1);
    rustix::fs::setxattr(
        &path,
        XATTR,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
}

fn parse(value: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// Whether SOURCE's filesystem keeps `user.` attributes (`root` is SOURCE's root folder).
pub fn has_user_xattrs(root: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 32];
    !matches!(
        rustix::fs::getxattr(proc_path(root.as_raw_fd()), XATTR, &mut buf),
        Err(SysErrno::NOTSUP | SysErrno::NOSYS)
    )
}

/// The records' file at SOURCE's root where its filesystem has no `user.` attributes.
pub const SIDECAR: &str = ".asme-owners";

/// Owners by path (relative to SOURCE), in [`SIDECAR`]: a journal of one change per line,
/// appended as changes come and compacted when the mount starts.
///
/// Lines: `=UID:GID<TAB>PATH` records, `-PATH` removes (and everything under it),
/// `>FROM<TAB>TO` moves (and everything under it); paths escape `\`, tab and newline.
#[derive(Debug)]
pub struct Sidecar {
    inner: Mutex<SidecarInner>,
}

#[derive(Debug)]
struct SidecarInner {
    records: HashMap<PathBuf, (u32, u32)>,
    /// SOURCE's root, where the journal is made at the first record.
    root: OwnedFd,
    /// The journal, once there is one: a folder whose container sets no owner gets none.
    journal: Option<std::fs::File>,
}

impl Sidecar {
    /// Reads the records in `root` (SOURCE's root folder) and, if there are any, writes them
    /// back compacted.
    pub fn open(root: BorrowedFd<'_>) -> io::Result<Sidecar> {
        let root = rustix::io::fcntl_dupfd_cloexec(root, 0)?;
        let (records, journal) = match read_at(root.as_fd(), SIDECAR) {
            Ok(text) => {
                let records = replay(&text);
                let journal = compact(root.as_fd(), &records)?;
                (records, Some(journal))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (HashMap::new(), None),
            Err(e) => return Err(e),
        };
        Ok(Sidecar {
            inner: Mutex::new(SidecarInner {
                records,
                root,
                journal,
            }),
        })
    }

    pub fn get(&self, path: &Path) -> Option<(u32, u32)> {
        lock(&self.inner).records.get(path).copied()
    }

    /// Records `owner` for `path`, or removes the record (`None`).
    pub fn set(&self, path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let line = match owner {
            Some(owner) => {
                inner.records.insert(path.to_path_buf(), owner);
                line_set(path, owner)
            }
            None => {
                if inner.records.remove(path).is_none() {
                    return Ok(());
                }
                format!("-{}\n", escape(path))
            }
        };
        inner.append(&line)
    }

    /// `path` and everything under it are gone.
    pub fn removed(&self, path: &Path) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let before = inner.records.len();
        inner.records.retain(|p, _| !p.starts_with(path));
        if inner.records.len() == before {
            return Ok(());
        }
        let line = format!("-{}\n", escape(path));
        inner.append(&line)
    }

    /// `from` (and everything under it) is now `to`; what was at `to` is replaced.
    pub fn moved(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        move_records(&mut inner.records, from, to);
        let line = format!(">{}\t{}\n", escape(from), escape(to));
        inner.append(&line)
    }
}

impl SidecarInner {
    /// Appends one journal line, making the journal at the first.
    fn append(&mut self, line: &str) -> io::Result<()> {
        let journal = match &mut self.journal {
            Some(journal) => journal,
            None => {
                let fd = rustix::fs::openat(
                    &self.root,
                    SIDECAR,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::APPEND
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                self.journal.insert(fd.into())
            }
        };
        journal.write_all(line.as_bytes())
    }
}

/// The records written afresh (temporary file, sync, rename over the journal), and the
/// journal opened for appending.
fn compact(
    root: BorrowedFd<'_>,
    records: &HashMap<PathBuf, (u32, u32)>,
) -> io::Result<std::fs::File> {
    let tmp = format!("{SIDECAR}.tmp");
    let mut snapshot = String::new();
    for (path, owner) in records {
        snapshot.push_str(&line_set(path, *owner));
    }
    let fd = rustix::fs::openat(
        root,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(snapshot.as_bytes())?;
    file.sync_all()?;
    rustix::fs::renameat(root, tmp.as_str(), root, SIDECAR)?;
    let journal: OwnedFd = rustix::fs::openat(
        root,
        SIDECAR,
        OFlags::WRONLY | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(journal.into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_at(root: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    use std::io::Read;
    let fd = rustix::fs::openat(
        root,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text)?;
    Ok(text)
}

fn move_records(records: &mut HashMap<PathBuf, (u32, u32)>, from: &Path, to: &Path) {
    records.retain(|p, _| !p.starts_with(to));
    let moving: Vec<PathBuf> = records
        .keys()
        .filter(|p| p.starts_with(from))
        .cloned()
        .collect();
    for old in moving {
        if let Some(owner) = records.remove(&old) {
            let rest = old.strip_prefix(from).unwrap_or(Path::new(""));
            records.insert(to.join(rest), owner);
        }
    }
}

/// The records a journal leaves (lines that do not parse are skipped: a torn last line).
fn replay(text: &str) -> HashMap<PathBuf, (u32, u32)> {
    let mut records = HashMap::new();
    for line in text.lines() {
        let Some((op, rest)) = line.split_at_checked(1) else {
            continue;
        };
        match op {
            "=" => {
                let Some((owner, path)) = rest.split_once('\t') else {
                    continue;
                };
                if let (Some(owner), Some(path)) = (parse(owner.as_bytes()), unescape(path)) {
                    records.insert(path, owner);
                }
            }
            "-" => {
                if let Some(path) = unescape(rest) {
                    records.retain(|p, _| !p.starts_with(&path));
                }
            }
            ">" => {
                let Some((from, to)) = rest.split_once('\t') else {
                    continue;
                };
                if let (Some(from), Some(to)) = (unescape(from), unescape(to)) {
                    move_records(&mut records, &from, &to);
                }
            }
            _ => {}
        }
    }
    records
}

fn line_set(path: &Path, owner: (u32, u32)) -> String {
    format!("={}:{}\t{}\n", owner.0, owner.1, escape(path))
}

fn escape(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

fn unescape(text: &str) -> Option<PathBuf> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'x' => {
                let hex = text.get(i + 2..i + 4)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    if out.is_empty() {
        return None;
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Whether `name` is the server's own attribute, which the mount hides.
pub fn is_ours(name: &OsStr) -> bool {
    name == OsStr::new(XATTR)
}

/// A `listxattr` list (names, each NUL-terminated) without the server's own attribute.
pub fn without_ours(list: &[u8]) -> Vec<u8> {
    list.split_inclusive(|b| *b == 0)
        .filter(|name| *name != [XATTR.as_bytes(), b"\0"].concat().as_slice())
        .flat_map(|name| name.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_malformed_ones_count_as_none() {
        assert_eq!(parse(b"999:999"), Some((999, 999)));
        assert_eq!(parse(b"0:5"), Some((0, 5)));
        for bad in [
            &b""[..],
            b"999",
            b"a:b",
            b"1:2:3",
            b"-1:0",
            b"99999999999:0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_journal_replays_records_moves_and_removals() {
        let odd = PathBuf::from(std::ffi::OsString::from_vec(b"a\tb\n\\\xff".to_vec()));
        let journal = [
            line_set(Path::new("data"), (999, 999)),
            line_set(Path::new("data/base/1"), (999, 998)),
            line_set(Path::new("data/x"), (5, 5)),
            line_set(&odd, (7, 7)),
            format!(
                ">{}\t{}\n",
                escape(Path::new("data")),
                escape(Path::new("pg"))
            ),
            format!("-{}\n", escape(Path::new("pg/x"))),
            "=garbage\n".to_string(),
            "=1:1\tunterminated\\".to_string(),
        ]
        .concat();
        let records = replay(&journal);
        let want: HashMap<PathBuf, (u32, u32)> = [
            (PathBuf::from("pg"), (999, 999)),
            (PathBuf::from("pg/base/1"), (999, 998)),
            (odd, (7, 7)),
        ]
        .into_iter()
        .collect();
        assert_eq!(records, want);
    }

    /// A folder whose container sets no owner gets no journal; the first record makes it,
    /// and the next mount reads it back.
    #[test]
    fn the_journal_is_made_at_the_first_record_and_read_back() {
        let dir = std::env::temp_dir().join(format!("asme-sidecar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = crate::sys::fs::open_folder_path(&dir).unwrap();
        let sidecar = Sidecar::open(root.as_fd()).unwrap();
        assert!(!dir.join(SIDECAR).exists());
        sidecar.set(Path::new("pg"), Some((999, 999))).unwrap();
        assert!(dir.join(SIDECAR).exists());
        drop(sidecar);
        let again = Sidecar::open(root.as_fd()).unwrap();
        assert_eq!(again.get(Path::new("pg")), Some((999, 999)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_move_replaces_what_was_at_the_target() {
        let mut records: HashMap<PathBuf, (u32, u32)> = [
            (PathBuf::from("a"), (1, 1)),
            (PathBuf::from("a/f"), (2, 2)),
            (PathBuf::from("b"), (3, 3)),
            (PathBuf::from("b/g"), (4, 4)),
            (PathBuf::from("ab"), (5, 5)),
        ]
        .into_iter()
        .collect();
        move_records(&mut records, Path::new("a"), Path::new("b"));
        let mut got: Vec<_> = records.into_iter().collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (PathBuf::from("ab"), (5, 5)),
                (PathBuf::from("b"), (1, 1)),
                (PathBuf::from("b/f"), (2, 2)),
            ]
        );
    }

    #[test]
    fn the_list_hides_only_our_attribute() {
        let list = b"user.a\0user.asme.owner\0security.selinux\0user.asme.owner2\0";
        assert_eq!(
            without_ours(list),
            b"user.a\0security.selinux\0user.asme.owner2\0".to_vec()
        );
        assert_eq!(without_ours(b""), Vec::<u8>::new());
        assert!(is_ours(OsStr::new("user.asme.owner")));
        assert!(!is_ours(OsStr::new("user.asme.owner2")));
    }
}

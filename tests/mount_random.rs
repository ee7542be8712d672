//! Integrity of `asme mount` (the uid/gid-mapping FUSE filesystem), run as root:
//!
//! - a randomised sequence of file-system operations (writes at random offsets, truncates,
//!   renames, links, reads, extended attributes, ...) applied side by side to the mount and to
//!   a plain reference folder on the host's filesystem, with every result compared (success,
//!   errno, data, attributes), and the whole trees compared at checkpoints and at the end;
//!   once as root mounts by default (FUSE passthrough), once as an ordinary user's mount works
//!   (through the server, with a limited number of descriptors);
//! - parallel writers through the mount, on distinct files, on one shared file (disjoint
//!   stripes, through separate descriptors and through one shared descriptor) and on one
//!   `O_APPEND` file (whole records, never split), with and without passthrough;
//! - requests over io_uring (the fuse module's `enable_uring` must be on) and over `/dev/fuse`
//!   (`-o nouring`).
//!
//! The mount maps SOURCE's uid/gid 1234 to root (`--map 1234/0:@1234/@0`), so root sees its
//! files as 0:0 in the mount, as in the reference folder, and SOURCE ends up all 1234:1234.
//!
//! Reproducing a failure: the message gives the seed, the number of the operation and the
//! command that replays exactly the operations up to the failing one:
//! `ASME_RANDOM_SEED=S ASME_RANDOM_OPS=N cargo test --test mount_random TEST -- --exact`.
//! `ASME_RANDOM_MOUNT_OPTIONS` adds `-o` options to the mount (e.g. `nopassthrough`), and
//! `ASME_RANDOM_FD_LIMIT` sets the server's open-file limit.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const ASME: &str = env!("CARGO_BIN_EXE_asme");
/// SOURCE's owner, shown as root in the mount.
const OWNER: u32 = 1234;
const MAP: &str = "1234/0:@1234/@0";

// ---------------------------------------------------------------------------------------------
// Fixture: SOURCE, MOUNTPOINT and REFERENCE folders, the mount, and cleanup even on panic.

struct Fixture {
    base: PathBuf,
    src: PathBuf,
    mnt: PathBuf,
    reference: PathBuf,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test runs as root (it mounts and gives SOURCE to uid {OWNER}): sudo -E cargo test"
        );
        let base = PathBuf::from(format!("/var/tmp/asme-{label}-{}", std::process::id()));
        assert!(
            !is_mounted(&base.join("mnt")),
            "{} is still mounted",
            base.display()
        );
        let _ = fs::remove_dir_all(&base);
        let fx = Fixture {
            src: base.join("src"),
            mnt: base.join("mnt"),
            reference: base.join("ref"),
            base,
        };
        for dir in [&fx.base, &fx.src, &fx.mnt, &fx.reference] {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::chown(&fx.src, Some(OWNER), Some(OWNER)).unwrap();
        fx
    }

    /// `asme mount --map 1234/0:@1234/@0 [-o OPTIONS] SOURCE MOUNTPOINT`, which returns once
    /// the mount is up. With `fd_limit`, the server runs with that open-file limit and without
    /// CAP_SYS_RESOURCE (so it cannot raise it, as an ordinary user cannot raise a hard limit):
    /// it then holds descriptors for only some of the files the kernel knows, and finds the
    /// others again by name.
    fn mount(&self, options: &[String], fd_limit: Option<u64>) {
        let mut cmd = Command::new(ASME);
        if let Some(limit) = fd_limit {
            // SAFETY: between fork and exec the closure makes only two system calls (no
            // allocation, no locks), which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    const CAP_SYS_RESOURCE: libc::c_ulong = 24;
                    if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["mount", "--map", MAP]);
        for o in options {
            cmd.args(["-o", o]);
        }
        cmd.arg(&self.src).arg(&self.mnt);
        let out = cmd.output().expect("running asme mount");
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let fstype = mount_type(&self.mnt);
        assert_eq!(
            fstype.as_deref(),
            Some("fuse.asme"),
            "asme mount returned but {} is not an asme mount",
            self.mnt.display()
        );
        self.check_transport(options);
    }

    /// Requests go over io_uring unless `nouring` was asked for: the server then has one
    /// `asme-ring-N` thread per CPU, each alive only while its queue is registered.
    fn check_transport(&self, options: &[String]) {
        let over_dev_fuse = options.iter().any(|o| o.split(',').any(|o| o == "nouring"));
        let switch = fs::read_to_string("/sys/module/fuse/parameters/enable_uring");
        if !over_dev_fuse {
            assert!(
                switch.as_deref().is_ok_and(|v| v.trim() == "Y"),
                "the fuse module does not offer io_uring (enable_uring: {switch:?}); as root: \
                 echo 1 > /sys/module/fuse/parameters/enable_uring (.ci/run does)"
            );
        }
        let cpus = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
        let cpus: usize = cpus
            .trim()
            .rsplit(['-', ','])
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
            + 1;
        let want = if over_dev_fuse { 0 } else { cpus };
        // Each queue's thread reports in before `asme mount` returns; a refused one ends.
        let rings = ring_threads(&self.mnt);
        assert_eq!(
            rings,
            want,
            "{} has {rings} io_uring queue threads, {want} expected (options {options:?})",
            self.mnt.display()
        );
    }

    /// `asme umount MOUNTPOINT`, then nothing may be mounted there any more.
    fn unmount(&self) {
        let out = Command::new(ASME)
            .arg("umount")
            .arg(&self.mnt)
            .output()
            .expect("running asme umount");
        assert!(
            out.status.success(),
            "asme umount {} failed ({}): {}",
            self.mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let left: Vec<String> = mountinfo()
            .lines()
            .filter(|l| l.contains(self.base.to_str().unwrap()))
            .map(str::to_owned)
            .collect();
        assert!(left.is_empty(), "still mounted after asme umount: {left:?}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new(ASME)
                .args(["umount", "--lazy"])
                .arg(&self.mnt)
                .output();
        }
        let target = CString::new(self.mnt.as_os_str().as_bytes()).unwrap();
        while is_mounted(&self.mnt) {
            // SAFETY: a valid C string; a failed detach only ends the loop.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
        if is_mounted(&self.mnt) {
            eprintln!(
                "{} is still mounted: {} left in place",
                self.mnt.display(),
                self.base.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

/// The `asme-ring-N` threads of the server of `mnt` (the `asme mount` process naming it).
fn ring_threads(mnt: &Path) -> usize {
    let mnt = mnt.as_os_str().as_bytes();
    let server = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .find(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.contains(&&b"mount"[..]) && args.contains(&mnt)
        })
        .unwrap_or_else(|| panic!("no asme mount process serves {}", mnt.escape_ascii()));
    fs::read_dir(server.path().join("task"))
        .unwrap()
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("asme-ring-"))
        })
        .count()
}

fn mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

/// The type of the mount on top at `path`, if it is a mount point (paths here have no spaces,
/// so mountinfo shows them unescaped).
fn mount_type(path: &Path) -> Option<String> {
    let path = path.to_str().unwrap();
    mountinfo()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (left.split(' ').nth(4)? == path).then(|| right.split(' ').next().unwrap().to_owned())
        })
        .next_back()
}

fn is_mounted(path: &Path) -> bool {
    mount_type(path).is_some()
}

// ---------------------------------------------------------------------------------------------
// Randomness: splitmix64, seeded.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// `len` bytes of data determined by `seed` (one seed in eight gives zeros, as if filling holes).
fn data(seed: u64, len: usize) -> Vec<u8> {
    if seed.is_multiple_of(8) {
        return vec![0; len];
    }
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?}: a number expected")))
}

fn seed_from_env() -> u64 {
    env_u64("ASME_RANDOM_SEED").unwrap_or_else(|| {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Rng(t.as_nanos() as u64 ^ u64::from(std::process::id())).next()
    })
}

// ---------------------------------------------------------------------------------------------
// Operations and their results.

/// A path relative to a tree's root (bytes: some names are not UTF-8).
#[derive(Clone, PartialEq, Eq)]
struct P(Vec<u8>);

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// open(2) flags, shown by name.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Flags(i32);

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.0 & libc::O_ACCMODE {
            libc::O_RDONLY => "O_RDONLY",
            libc::O_WRONLY => "O_WRONLY",
            _ => "O_RDWR",
        };
        let mut s = access.to_owned();
        for (bit, name) in [
            (libc::O_CREAT, "O_CREAT"),
            (libc::O_EXCL, "O_EXCL"),
            (libc::O_TRUNC, "O_TRUNC"),
            (libc::O_APPEND, "O_APPEND"),
            (libc::O_DIRECTORY, "O_DIRECTORY"),
            (libc::O_NOFOLLOW, "O_NOFOLLOW"),
            (libc::O_NONBLOCK, "O_NONBLOCK"),
            (libc::O_DIRECT, "O_DIRECT"),
        ] {
            if self.0 & bit != 0 {
                s.push('|');
                s.push_str(name);
            }
        }
        f.write_str(&s)
    }
}

/// A mode, shown in octal.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode(u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// A timestamp for utimensat (seconds, nanoseconds); None is UTIME_OMIT.
type Time = Option<(i64, i64)>;

#[derive(Debug, Clone)]
enum Op {
    /// open(2), then close at once, or keep the descriptor (`hold`) for the Held* operations.
    Open {
        path: P,
        flags: Flags,
        mode: Mode,
        hold: bool,
    },
    /// open O_WRONLY (O_CREAT, O_APPEND as said), pwrite (or write when appending), close.
    Write {
        path: P,
        create: bool,
        append: bool,
        off: u64,
        len: usize,
        seed: u64,
    },
    /// open O_RDONLY, pread, close.
    Read {
        path: P,
        off: u64,
        len: usize,
    },
    Truncate {
        path: P,
        size: u64,
    },
    /// renameat2 with 0, RENAME_NOREPLACE or RENAME_EXCHANGE.
    Rename {
        from: P,
        to: P,
        flags: u32,
    },
    Link {
        from: P,
        to: P,
    },
    Unlink {
        path: P,
    },
    Mkdir {
        path: P,
        mode: Mode,
    },
    Rmdir {
        path: P,
    },
    Symlink {
        target: P,
        path: P,
    },
    Readlink {
        path: P,
    },
    Chmod {
        path: P,
        mode: Mode,
    },
    /// utimensat, then (l)stat: the times set must be what both show.
    Utimens {
        path: P,
        atime: Time,
        mtime: Time,
        nofollow: bool,
    },
    Stat {
        path: P,
        follow: bool,
    },
    Readdir {
        path: P,
    },
    Mkfifo {
        path: P,
        mode: Mode,
    },
    /// open O_RDONLY, fsync or fdatasync, close.
    Fsync {
        path: P,
        data_only: bool,
    },
    /// open O_WRONLY|O_DIRECT, pwrite of whole 4 KiB blocks from an aligned buffer, close.
    DirectWrite {
        path: P,
        block: u64,
        blocks: usize,
        seed: u64,
    },
    /// open O_RDONLY|O_DIRECT, pread of whole 4 KiB blocks into an aligned buffer, close.
    DirectRead {
        path: P,
        block: u64,
        blocks: usize,
    },
    /// (l)setxattr with 0, XATTR_CREATE or XATTR_REPLACE.
    SetXattr {
        path: P,
        name: &'static str,
        len: usize,
        seed: u64,
        flags: i32,
        nofollow: bool,
    },
    /// (l)getxattr into a buffer of `size` bytes.
    GetXattr {
        path: P,
        name: &'static str,
        size: usize,
        nofollow: bool,
    },
    /// (l)listxattr; the names sorted.
    ListXattr {
        path: P,
        nofollow: bool,
    },
    RemoveXattr {
        path: P,
        name: &'static str,
        nofollow: bool,
    },
    HeldWrite {
        slot: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    /// write(2) at the descriptor's position (the end for O_APPEND).
    HeldAppend {
        slot: usize,
        len: usize,
        seed: u64,
    },
    HeldRead {
        slot: usize,
        off: u64,
        len: usize,
    },
    HeldTruncate {
        slot: usize,
        size: u64,
    },
    HeldStat {
        slot: usize,
    },
    HeldFsync {
        slot: usize,
        data_only: bool,
    },
    HeldChmod {
        slot: usize,
        mode: Mode,
    },
    HeldUtimens {
        slot: usize,
        atime: Time,
        mtime: Time,
    },
    /// fallocate: plain (may grow the file) or punching a hole (keeps the size).
    HeldFallocate {
        slot: usize,
        punch: bool,
        off: u64,
        len: u64,
    },
    HeldCopy {
        from: usize,
        to: usize,
        off_in: u64,
        off_out: u64,
        len: usize,
    },
    HeldClose {
        slot: usize,
    },
}

impl Op {
    /// The path an operation made or found, when it succeeded.
    fn main_path(&self) -> Option<&P> {
        match self {
            Op::Open { path, .. }
            | Op::Write { path, .. }
            | Op::Read { path, .. }
            | Op::Truncate { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Readlink { path }
            | Op::Chmod { path, .. }
            | Op::Utimens { path, .. }
            | Op::Stat { path, .. }
            | Op::Mkfifo { path, .. }
            | Op::SetXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::DirectWrite { path, .. } => Some(path),
            Op::Rename { to, .. } | Op::Link { to, .. } => Some(to),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Open { hold: false, .. } => "open",
            Op::Open { hold: true, .. } => "open+hold",
            Op::Write { .. } => "write",
            Op::Read { .. } => "read",
            Op::Truncate { .. } => "truncate",
            Op::Rename { flags: 0, .. } => "rename",
            Op::Rename { flags, .. } if *flags == libc::RENAME_NOREPLACE => "rename-noreplace",
            Op::Rename { .. } => "rename-exchange",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Symlink { .. } => "symlink",
            Op::Readlink { .. } => "readlink",
            Op::Chmod { .. } => "chmod",
            Op::Utimens { .. } => "utimensat",
            Op::Stat { follow: true, .. } => "stat",
            Op::Stat { follow: false, .. } => "lstat",
            Op::Readdir { .. } => "readdir",
            Op::Mkfifo { .. } => "mkfifo",
            Op::Fsync { .. } => "fsync",
            Op::DirectWrite { .. } => "O_DIRECT write",
            Op::DirectRead { .. } => "O_DIRECT read",
            Op::SetXattr { .. } => "setxattr",
            Op::GetXattr { .. } => "getxattr",
            Op::ListXattr { .. } => "listxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::HeldWrite { .. } => "held-pwrite",
            Op::HeldAppend { .. } => "held-write",
            Op::HeldRead { .. } => "held-pread",
            Op::HeldTruncate { .. } => "held-ftruncate",
            Op::HeldStat { .. } => "held-fstat",
            Op::HeldFsync { .. } => "held-fsync",
            Op::HeldChmod { .. } => "held-fchmod",
            Op::HeldUtimens { .. } => "held-futimens",
            Op::HeldFallocate { .. } => "held-fallocate",
            Op::HeldCopy { .. } => "held-copy_file_range",
            Op::HeldClose { .. } => "held-close",
        }
    }
}

/// When the randomised run started (seconds since the epoch): modification times from then
/// on are "recent", whichever tree shows them.
static RUN_STARTED: AtomicI64 = AtomicI64::new(i64::MAX);

/// A modification time as far as both trees must agree: a time set explicitly (utimensat) is
/// exact; one the filesystem set during the run is only "recent" (the trees are written a
/// moment apart). A write after an explicit time must make it recent again in both.
///
/// A FIFO's times are not compared: its data never reaches a FUSE server, and the kernel does
/// not update the times of a FUSE inode itself, so a FIFO written through any FUSE mount keeps
/// its old mtime (a limitation of FUSE, reported, not something this test can hold asme to).
#[derive(Clone, Copy, PartialEq, Eq)]
enum MTime {
    Recent,
    At(i64, i64),
    Fifo,
}

impl MTime {
    fn of(m: &fs::Metadata) -> MTime {
        if m.mode() & libc::S_IFMT == libc::S_IFIFO {
            return MTime::Fifo;
        }
        let (sec, nsec) = (m.mtime(), m.mtime_nsec());
        if is_recent(sec) {
            MTime::Recent
        } else {
            MTime::At(sec, nsec)
        }
    }
}

/// Whether a time (seconds) falls in this run: set by the filesystem, not by the test.
fn is_recent(sec: i64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = RUN_STARTED.load(Ordering::Relaxed);
    sec >= start.saturating_sub(2) && sec <= now + 2
}

/// A time just set explicitly, as both trees must show it. It can already be the
/// filesystem's again: resolving a path through a symlink reads that link (the path `l/l`
/// where `l` links to `.` reads `l` itself), which moves an old atime to now under relatime,
/// a moment apart in the two trees. Such a time is only recent.
fn set_time(sec: i64, nsec: i64) -> (i64, i64) {
    if is_recent(sec) {
        (i64::MIN, 0)
    } else {
        (sec, nsec)
    }
}

impl fmt::Debug for MTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MTime::Recent => f.write_str("recent"),
            MTime::At(s, n) => write!(f, "({s}, {n})"),
            MTime::Fifo => f.write_str("(a FIFO's: not compared)"),
        }
    }
}

/// What lstat/stat/fstat show, minus what legitimately differs (inode numbers, blocks, ctime,
/// and atime and mtime beyond what `MTime` says, unless set explicitly just before).
#[derive(Clone, PartialEq, Eq)]
struct St {
    mode: u32,
    nlink: u64,
    size: u64,
    uid: u32,
    gid: u32,
    rdev: u64,
    mclass: MTime,
    atime: Time,
    mtime: Time,
}

impl St {
    fn of(m: &fs::Metadata) -> St {
        St {
            mode: m.mode(),
            nlink: m.nlink(),
            size: m.size(),
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev(),
            mclass: MTime::of(m),
            atime: None,
            mtime: None,
        }
    }

    /// With the times that were set (None: omitted, so not compared).
    fn with_times(m: &fs::Metadata, atime: Time, mtime: Time) -> St {
        St {
            atime: atime.map(|_| set_time(m.atime(), m.atime_nsec())),
            mtime: mtime.map(|_| set_time(m.mtime(), m.mtime_nsec())),
            ..St::of(m)
        }
    }
}

impl fmt::Debug for St {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{mode 0o{:o} nlink {} size {} uid {} gid {}",
            self.mode, self.nlink, self.size, self.uid, self.gid
        )?;
        if self.rdev != 0 {
            write!(f, " rdev {:#x}", self.rdev)?;
        }
        write!(f, " mtime {:?}", self.mclass)?;
        if let Some(t) = self.atime {
            write!(f, " atime set {t:?}")?;
        }
        if let Some(t) = self.mtime {
            write!(f, " mtime set {t:?}")?;
        }
        f.write_str("}")
    }
}

#[derive(PartialEq, Eq)]
enum Val {
    Done,
    Count(u64),
    Data(Vec<u8>),
    Stat(St),
    Names(Vec<Vec<u8>>),
    /// Directory entries (names, d_type), sorted.
    Entries(Vec<(Vec<u8>, u8)>),
    Target(Vec<u8>),
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Done => f.write_str("ok"),
            Val::Count(n) => write!(f, "{n}"),
            Val::Data(d) => {
                let head = &d[..d.len().min(16)];
                write!(f, "{} bytes {:02x?}..", d.len(), head)
            }
            Val::Stat(s) => write!(f, "{s:?}"),
            Val::Names(names) => {
                let names: Vec<String> =
                    names.iter().map(|n| n.escape_ascii().to_string()).collect();
                write!(f, "{names:?}")
            }
            Val::Entries(entries) => {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(n, t)| format!("{} ({})", n.escape_ascii(), dtype_name(*t)))
                    .collect();
                write!(f, "{entries:?}")
            }
            Val::Target(t) => write!(f, "-> \"{}\"", t.escape_ascii()),
        }
    }
}

/// A failed step of an operation and its errno.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fail {
    step: &'static str,
    errno: i32,
}

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, errno_name(self.errno))
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ESPIPE => "ESPIPE",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::ERANGE => "ERANGE",
        libc::ENODATA => "ENODATA",
        libc::E2BIG => "E2BIG",
        _ => "",
    };
    format!("{name} ({})", io::Error::from_raw_os_error(e))
}

type R = Result<Val, Fail>;

fn at(step: &'static str) -> impl Fn(io::Error) -> Fail {
    move |e| Fail {
        step,
        errno: e.raw_os_error().unwrap_or(-1),
    }
}

fn last_error(step: &'static str) -> Fail {
    at(step)(io::Error::last_os_error())
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

// Thin wrappers over the calls std does not offer (or offers only with extra checks).

fn open(path: &Path, flags: i32, mode: u32) -> Result<File, Fail> {
    let c = cpath(path);
    // SAFETY: a valid C string; open takes the mode as a variadic unsigned int.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(last_error("open"));
    }
    // SAFETY: open just returned this descriptor, and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// close(2) with its result (FUSE sends a FLUSH, whose error close reports).
fn close(file: File) -> Result<(), Fail> {
    let fd = file.into_raw_fd();
    // SAFETY: the descriptor is ours (taken from the File) and used no more.
    if unsafe { libc::close(fd) } != 0 {
        return Err(last_error("close"));
    }
    Ok(())
}

fn truncate(path: &Path, size: u64) -> Result<(), Fail> {
    let c = cpath(path);
    // SAFETY: a valid C string.
    if unsafe { libc::truncate(c.as_ptr(), size as libc::off_t) } != 0 {
        return Err(last_error("truncate"));
    }
    Ok(())
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), Fail> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: valid C strings, AT_FDCWD for both directories.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if ret != 0 {
        return Err(last_error("renameat2"));
    }
    Ok(())
}

fn mkfifo(path: &Path, mode: u32) -> Result<(), Fail> {
    let c = cpath(path);
    // SAFETY: a valid C string.
    if unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) } != 0 {
        return Err(last_error("mkfifo"));
    }
    Ok(())
}

fn timespecs(atime: Time, mtime: Time) -> [libc::timespec; 2] {
    let ts = |t: Time| match t {
        Some((sec, nsec)) => libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec as _,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    };
    [ts(atime), ts(mtime)]
}

fn utimensat(path: &Path, atime: Time, mtime: Time, nofollow: bool) -> Result<(), Fail> {
    let c = cpath(path);
    let times = timespecs(atime, mtime);
    let flags = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    // SAFETY: a valid C string and the two-element array utimensat reads.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) } != 0 {
        return Err(last_error("utimensat"));
    }
    Ok(())
}

fn futimens(file: &File, atime: Time, mtime: Time) -> Result<(), Fail> {
    let times = timespecs(atime, mtime);
    // SAFETY: an open descriptor and the two-element array futimens reads.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(last_error("futimens"));
    }
    Ok(())
}

fn fallocate(file: &File, mode: i32, off: u64, len: u64) -> Result<(), Fail> {
    // SAFETY: an open descriptor; fallocate checks its arguments.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, off as i64, len as i64) };
    if ret != 0 {
        return Err(last_error("fallocate"));
    }
    Ok(())
}

fn copy_file_range(from: &File, off_in: u64, to: &File, off_out: u64, len: usize) -> R {
    let (mut a, mut b) = (off_in as i64, off_out as i64);
    // SAFETY: open descriptors and offsets that live across the call.
    let n =
        unsafe { libc::copy_file_range(from.as_raw_fd(), &mut a, to.as_raw_fd(), &mut b, len, 0) };
    if n < 0 {
        return Err(last_error("copy_file_range"));
    }
    Ok(Val::Count(n as u64))
}

/// Every entry readdir(3) returns, `.` and `..` included, with its d_type (sorted by name).
fn list_dir(path: &Path) -> Result<Vec<(Vec<u8>, u8)>, Fail> {
    let c = cpath(path);
    // SAFETY: a valid C string.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    if dir.is_null() {
        return Err(last_error("opendir"));
    }
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is this thread's; readdir reports errors only through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dir` is an open stream, used by this thread only.
        let entry = unsafe { libc::readdir64(dir) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break match e.raw_os_error() {
                Some(0) => Ok(()),
                _ => Err(at("readdir")(e)),
            };
        }
        // SAFETY: readdir returned an entry, valid until the next call on `dir`; its name is
        // NUL-terminated.
        let (name, kind) = unsafe {
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
            (name.to_bytes().to_vec(), (*entry).d_type)
        };
        out.push((name, kind));
    };
    // SAFETY: closes the stream opened above, used no more.
    unsafe { libc::closedir(dir) };
    result?;
    out.sort();
    Ok(out)
}

fn dtype_name(t: u8) -> &'static str {
    match t {
        libc::DT_REG => "file",
        libc::DT_DIR => "dir",
        libc::DT_LNK => "symlink",
        libc::DT_FIFO => "fifo",
        libc::DT_UNKNOWN => "unknown",
        _ => "other",
    }
}

/// A buffer of `len` bytes aligned for O_DIRECT, inside `storage`.
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    storage.resize(len + 4096, 0);
    let skip = storage.as_ptr().align_offset(4096);
    &mut storage[skip..skip + len]
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32, nofollow: bool) -> R {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    let (v, len) = (value.as_ptr().cast(), value.len());
    // SAFETY: valid C strings and a value buffer of `len` bytes.
    let ret = unsafe {
        if nofollow {
            libc::lsetxattr(c.as_ptr(), n.as_ptr(), v, len, flags)
        } else {
            libc::setxattr(c.as_ptr(), n.as_ptr(), v, len, flags)
        }
    };
    if ret != 0 {
        return Err(last_error("setxattr"));
    }
    Ok(Val::Done)
}

fn getxattr(path: &Path, name: &str, size: usize, nofollow: bool) -> Result<Vec<u8>, Fail> {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    let b = buf.as_mut_ptr().cast();
    // SAFETY: valid C strings and a buffer of `size` bytes.
    let ret = unsafe {
        if nofollow {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), b, size)
        } else {
            libc::getxattr(c.as_ptr(), n.as_ptr(), b, size)
        }
    };
    if ret < 0 {
        return Err(last_error("getxattr"));
    }
    buf.truncate(ret as usize);
    Ok(buf)
}

/// The names, sorted (listing order is the filesystem's business).
fn listxattr(path: &Path, nofollow: bool) -> Result<Vec<Vec<u8>>, Fail> {
    let c = cpath(path);
    let mut buf = vec![0u8; 1 << 16];
    let b = buf.as_mut_ptr().cast();
    // SAFETY: a valid C string and a buffer of the size given.
    let ret = unsafe {
        if nofollow {
            libc::llistxattr(c.as_ptr(), b, buf.len())
        } else {
            libc::listxattr(c.as_ptr(), b, buf.len())
        }
    };
    if ret < 0 {
        return Err(last_error("listxattr"));
    }
    let mut names: Vec<Vec<u8>> = buf[..ret as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names.sort();
    Ok(names)
}

fn removexattr(path: &Path, name: &str, nofollow: bool) -> R {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    let ret = unsafe {
        if nofollow {
            libc::lremovexattr(c.as_ptr(), n.as_ptr())
        } else {
            libc::removexattr(c.as_ptr(), n.as_ptr())
        }
    };
    if ret != 0 {
        return Err(last_error("removexattr"));
    }
    Ok(Val::Done)
}

// ---------------------------------------------------------------------------------------------
// Running an operation on one tree.

/// A descriptor pair kept open across operations: [mount, reference].
struct Held {
    what: String,
    files: [File; 2],
}

/// Applies `op` to the tree at `root` (side 0: the mount, 1: the reference). An `Open` with
/// `hold` also returns its descriptor.
fn exec(op: &Op, root: &Path, held: &[Held], side: usize) -> (R, Option<File>) {
    let p = |rel: &P| root.join(OsStr::from_bytes(&rel.0));
    let file = |slot: usize| &held[slot].files[side];
    let result = match op {
        Op::Open {
            path,
            flags,
            mode,
            hold,
        } => {
            return match open(&p(path), flags.0, mode.0) {
                Ok(f) if *hold => (Ok(Val::Done), Some(f)),
                Ok(f) => (close(f).map(|()| Val::Done), None),
                Err(e) => (Err(e), None),
            };
        }
        Op::Write {
            path,
            create,
            append,
            off,
            len,
            seed,
        } => (|| {
            let mut flags = libc::O_WRONLY | libc::O_NONBLOCK;
            if *create {
                flags |= libc::O_CREAT;
            }
            if *append {
                flags |= libc::O_APPEND;
            }
            let f = open(&p(path), flags, 0o644)?;
            let buf = data(*seed, *len);
            let n = if *append {
                (&f).write(&buf)
            } else {
                f.write_at(&buf, *off)
            }
            .map_err(at("write"))?;
            close(f)?;
            Ok(Val::Count(n as u64))
        })(),
        Op::Read { path, off, len } => (|| {
            let f = open(&p(path), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
            let mut buf = vec![0; *len];
            let n = f.read_at(&mut buf, *off).map_err(at("pread"))?;
            buf.truncate(n);
            close(f)?;
            Ok(Val::Data(buf))
        })(),
        Op::Truncate { path, size } => truncate(&p(path), *size).map(|()| Val::Done),
        Op::Rename { from, to, flags } => renameat2(&p(from), &p(to), *flags).map(|()| Val::Done),
        Op::Link { from, to } => fs::hard_link(p(from), p(to))
            .map(|()| Val::Done)
            .map_err(at("link")),
        Op::Unlink { path } => fs::remove_file(p(path))
            .map(|()| Val::Done)
            .map_err(at("unlink")),
        Op::Mkdir { path, mode } => fs::DirBuilder::new()
            .mode(mode.0)
            .create(p(path))
            .map(|()| Val::Done)
            .map_err(at("mkdir")),
        Op::Rmdir { path } => fs::remove_dir(p(path))
            .map(|()| Val::Done)
            .map_err(at("rmdir")),
        Op::Symlink { target, path } => {
            std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), p(path))
                .map(|()| Val::Done)
                .map_err(at("symlink"))
        }
        Op::Readlink { path } => fs::read_link(p(path))
            .map(|t| Val::Target(t.into_os_string().into_encoded_bytes()))
            .map_err(at("readlink")),
        Op::Chmod { path, mode } => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(mode.0))
                .map(|()| Val::Done)
                .map_err(at("chmod"))
        }
        Op::Utimens {
            path,
            atime,
            mtime,
            nofollow,
        } => (|| {
            utimensat(&p(path), *atime, *mtime, *nofollow)?;
            let m = if *nofollow {
                fs::symlink_metadata(p(path))
            } else {
                fs::metadata(p(path))
            }
            .map_err(at("stat after utimensat"))?;
            Ok(Val::Stat(St::with_times(&m, *atime, *mtime)))
        })(),
        Op::Stat { path, follow } => if *follow {
            fs::metadata(p(path))
        } else {
            fs::symlink_metadata(p(path))
        }
        .map(|m| Val::Stat(St::of(&m)))
        .map_err(at("stat")),
        Op::Readdir { path } => list_dir(&p(path)).map(Val::Entries),
        Op::Mkfifo { path, mode } => mkfifo(&p(path), mode.0).map(|()| Val::Done),
        Op::Fsync { path, data_only } => (|| {
            let f = open(&p(path), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
            if *data_only {
                f.sync_data().map_err(at("fdatasync"))?;
            } else {
                f.sync_all().map_err(at("fsync"))?;
            }
            close(f)?;
            Ok(Val::Done)
        })(),
        Op::DirectWrite {
            path,
            block,
            blocks,
            seed,
        } => (|| {
            let f = open(
                &p(path),
                libc::O_WRONLY | libc::O_DIRECT | libc::O_NONBLOCK,
                0,
            )?;
            let mut storage = Vec::new();
            let buf = aligned(&mut storage, blocks * 4096);
            buf.copy_from_slice(&data(*seed, blocks * 4096));
            let n = f.write_at(buf, block * 4096).map_err(at("pwrite"))?;
            close(f)?;
            Ok(Val::Count(n as u64))
        })(),
        Op::DirectRead {
            path,
            block,
            blocks,
        } => (|| {
            let f = open(
                &p(path),
                libc::O_RDONLY | libc::O_DIRECT | libc::O_NONBLOCK,
                0,
            )?;
            let mut storage = Vec::new();
            let buf = aligned(&mut storage, blocks * 4096);
            let n = f.read_at(buf, block * 4096).map_err(at("pread"))?;
            let out = buf[..n].to_vec();
            close(f)?;
            Ok(Val::Data(out))
        })(),
        Op::SetXattr {
            path,
            name,
            len,
            seed,
            flags,
            nofollow,
        } => setxattr(&p(path), name, &data(*seed, *len), *flags, *nofollow),
        Op::GetXattr {
            path,
            name,
            size,
            nofollow,
        } => getxattr(&p(path), name, *size, *nofollow).map(Val::Data),
        Op::ListXattr { path, nofollow } => listxattr(&p(path), *nofollow).map(Val::Names),
        Op::RemoveXattr {
            path,
            name,
            nofollow,
        } => removexattr(&p(path), name, *nofollow),
        Op::HeldWrite {
            slot,
            off,
            len,
            seed,
        } => file(*slot)
            .write_at(&data(*seed, *len), *off)
            .map(|n| Val::Count(n as u64))
            .map_err(at("pwrite")),
        Op::HeldAppend { slot, len, seed } => file(*slot)
            .write(&data(*seed, *len))
            .map(|n| Val::Count(n as u64))
            .map_err(at("write")),
        Op::HeldRead { slot, off, len } => {
            let mut buf = vec![0; *len];
            file(*slot)
                .read_at(&mut buf, *off)
                .map(|n| {
                    buf.truncate(n);
                    Val::Data(buf)
                })
                .map_err(at("pread"))
        }
        Op::HeldTruncate { slot, size } => file(*slot)
            .set_len(*size)
            .map(|()| Val::Done)
            .map_err(at("ftruncate")),
        Op::HeldStat { slot } => file(*slot)
            .metadata()
            .map(|m| Val::Stat(St::of(&m)))
            .map_err(at("fstat")),
        Op::HeldFsync { slot, data_only } => if *data_only {
            file(*slot).sync_data()
        } else {
            file(*slot).sync_all()
        }
        .map(|()| Val::Done)
        .map_err(at("fsync")),
        Op::HeldChmod { slot, mode } => file(*slot)
            .set_permissions(fs::Permissions::from_mode(mode.0))
            .map(|()| Val::Done)
            .map_err(at("fchmod")),
        Op::HeldUtimens { slot, atime, mtime } => (|| {
            futimens(file(*slot), *atime, *mtime)?;
            let m = file(*slot).metadata().map_err(at("fstat after futimens"))?;
            Ok(Val::Stat(St::with_times(&m, *atime, *mtime)))
        })(),
        Op::HeldFallocate {
            slot,
            punch,
            off,
            len,
        } => {
            let mode = if *punch {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                0
            };
            fallocate(file(*slot), mode, *off, *len).map(|()| Val::Done)
        }
        Op::HeldCopy {
            from,
            to,
            off_in,
            off_out,
            len,
        } => copy_file_range(file(*from), *off_in, file(*to), *off_out, *len),
        Op::HeldClose { .. } => unreachable!("closed by the runner"),
    };
    (result, None)
}

// ---------------------------------------------------------------------------------------------
// Generating operations.

/// Most names are files, some are folders; some are unusual (a space, bytes that are not
/// UTF-8, the longest name allowed and one byte more).
fn leaf(rng: &mut Rng) -> Vec<u8> {
    match rng.below(48) {
        0..=27 => format!("n{}", rng.below(14)).into_bytes(),
        28..=29 => b"sp ace".to_vec(),
        30..=31 => b"\xff\xfe".to_vec(),
        32 => vec![b'L'; 255],
        33 => vec![b'L'; 256],
        _ => dir_name(rng),
    }
}

/// Many long names in the top folder, so that listing it takes several FUSE replies.
fn wide_name(rng: &mut Rng) -> Vec<u8> {
    format!("wide-{:03}-{}", rng.below(400), "x".repeat(40)).into_bytes()
}

fn dir_name(rng: &mut Rng) -> Vec<u8> {
    format!("d{}", rng.below(8)).into_bytes()
}

/// A path in a small namespace (8 folders at the top, each with up to 8 folders, 16 file names
/// everywhere), so that operations collide.
fn path(rng: &mut Rng) -> P {
    let mut p = Vec::new();
    let depth = match rng.below(100) {
        0..=14 => 0,
        15..=84 => 1,
        _ => 2,
    };
    for _ in 0..depth {
        p.extend(dir_name(rng));
        p.push(b'/');
    }
    if depth == 0 && rng.pct(25) {
        p.extend(wide_name(rng));
    } else {
        p.extend(leaf(rng));
    }
    P(p)
}

/// A folder-ish path (for mkdir): usually a `dN` leaf.
fn dir_path(rng: &mut Rng) -> P {
    let mut p = path(rng);
    if rng.pct(70) {
        let cut = p.0.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        p.0.truncate(cut);
        p.0.extend(dir_name(rng));
    }
    p
}

/// A symlink target: relative, never with `..` (so nothing resolves outside a tree, whatever
/// renames do later); sometimes dangling, sometimes a loop.
fn link_target(rng: &mut Rng) -> P {
    match rng.below(10) {
        0 => P(b".".to_vec()),
        1 => P(b"nowhere".to_vec()),
        2 => P(dir_name(rng)),
        _ => path(rng),
    }
}

/// Offsets: mostly within the first 128 KiB, some up to 1 MiB, a few far out (holes).
fn offset(rng: &mut Rng) -> u64 {
    match rng.below(100) {
        0..=69 => rng.below(128 << 10),
        70..=94 => rng.below(1 << 20),
        _ => rng.below(4 << 20),
    }
}

fn length(rng: &mut Rng) -> usize {
    (match rng.below(100) {
        0..=4 => 0,
        5..=49 => rng.below(4096) + 1,
        50..=89 => rng.below(64 << 10) + 1,
        _ => 64 << 10,
    }) as usize
}

fn xattr_name(rng: &mut Rng) -> &'static str {
    rng.pick(&["user.a", "user.a", "user.b", "trusted.t", "user.nope"])
}

fn file_mode(rng: &mut Rng) -> Mode {
    Mode(rng.pick(&[
        0o644, 0o644, 0o600, 0o755, 0o444, 0o000, 0o666, 0o640, 0o4755, 0o2755, 0o2745, 0o1777,
    ]))
}

fn dir_mode(rng: &mut Rng) -> Mode {
    Mode(rng.pick(&[0o755, 0o755, 0o700, 0o777, 0o1777, 0o2755, 0o555, 0o000]))
}

fn time(rng: &mut Rng) -> Time {
    let sec = match rng.below(10) {
        0 => -(rng.below(1 << 31) as i64),
        1 => 0,
        _ => rng.below(4_000_000_000) as i64,
    };
    let nsec = if rng.pct(20) {
        0
    } else {
        rng.below(1_000_000_000) as i64
    };
    Some((sec, nsec))
}

/// Times for utimensat: both, or one of them omitted.
fn times(rng: &mut Rng) -> (Time, Time) {
    match rng.below(5) {
        0 => (None, time(rng)),
        1 => (time(rng), None),
        _ => (time(rng), time(rng)),
    }
}

fn open_flags(rng: &mut Rng) -> Flags {
    let mut f = rng.pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR, libc::O_RDWR]);
    // Never block: a FIFO opened for reading or writing alone would wait for its other end.
    f |= libc::O_NONBLOCK;
    for (p, bit) in [
        (60, libc::O_CREAT),
        (20, libc::O_EXCL),
        (20, libc::O_TRUNC),
        (15, libc::O_APPEND),
        (4, libc::O_DIRECTORY),
        (8, libc::O_NOFOLLOW),
    ] {
        if rng.pct(p) {
            f |= bit;
        }
    }
    Flags(f)
}

const MAX_HELD: usize = 6;

/// The next operation: on `held` descriptors, or on paths, a third of them among the `known`
/// paths (where operations recently succeeded, so that they meet existing objects); reads and
/// removals of extended attributes mostly name one recently set (`xattrs`).
fn generate(rng: &mut Rng, held: usize, known: &[P], xattrs: &[(P, &'static str)]) -> Op {
    let slot = |rng: &mut Rng| rng.below(held as u64) as usize;
    let prefer_known = |rng: &mut Rng, pct: u64| {
        if !known.is_empty() && rng.pct(pct) {
            known[rng.below(known.len() as u64) as usize].clone()
        } else {
            path(rng)
        }
    };
    let any = |rng: &mut Rng| prefer_known(rng, 35);
    // Operations on held descriptors (a quarter of them), when there are any.
    if held > 0 && rng.pct(25) {
        return match rng.below(100) {
            0..=29 => Op::HeldWrite {
                slot: slot(rng),
                off: offset(rng),
                len: length(rng),
                seed: rng.next(),
            },
            30..=37 => Op::HeldAppend {
                slot: slot(rng),
                len: length(rng),
                seed: rng.next(),
            },
            38..=56 => Op::HeldRead {
                slot: slot(rng),
                off: offset(rng),
                len: length(rng),
            },
            57..=62 => Op::HeldTruncate {
                slot: slot(rng),
                size: offset(rng),
            },
            63..=74 => Op::HeldStat { slot: slot(rng) },
            75 => Op::HeldFsync {
                slot: slot(rng),
                data_only: rng.pct(50),
            },
            76..=77 => Op::HeldChmod {
                slot: slot(rng),
                mode: file_mode(rng),
            },
            78..=79 => {
                let (atime, mtime) = times(rng);
                Op::HeldUtimens {
                    slot: slot(rng),
                    atime,
                    mtime,
                }
            }
            80..=83 => Op::HeldFallocate {
                slot: slot(rng),
                punch: rng.pct(50),
                off: offset(rng),
                len: length(rng) as u64 + 1,
            },
            84..=88 => Op::HeldCopy {
                from: slot(rng),
                to: slot(rng),
                off_in: offset(rng),
                off_out: offset(rng),
                len: length(rng),
            },
            _ => Op::HeldClose { slot: slot(rng) },
        };
    }
    match rng.below(1000) {
        0..=79 => Op::Open {
            path: any(rng),
            flags: open_flags(rng),
            mode: file_mode(rng),
            hold: false,
        },
        80..=109 => Op::Open {
            path: any(rng),
            flags: open_flags(rng),
            mode: file_mode(rng),
            hold: true,
        },
        110..=279 => Op::Write {
            path: any(rng),
            create: rng.pct(50),
            append: rng.pct(15),
            off: offset(rng),
            len: length(rng),
            seed: rng.next(),
        },
        280..=379 => Op::Read {
            path: any(rng),
            off: offset(rng),
            len: length(rng),
        },
        380..=419 => Op::Truncate {
            path: any(rng),
            size: offset(rng),
        },
        420..=499 => Op::Rename {
            from: any(rng),
            to: if rng.pct(20) { dir_path(rng) } else { any(rng) },
            flags: match rng.below(10) {
                0..=5 => 0,
                6..=7 => libc::RENAME_NOREPLACE,
                _ => libc::RENAME_EXCHANGE,
            },
        },
        500..=539 => Op::Link {
            from: any(rng),
            to: any(rng),
        },
        540..=629 => Op::Unlink { path: any(rng) },
        630..=659 => Op::Mkdir {
            path: dir_path(rng),
            mode: dir_mode(rng),
        },
        660..=689 => Op::Rmdir {
            path: if rng.pct(60) { dir_path(rng) } else { any(rng) },
        },
        690..=709 => Op::Symlink {
            target: link_target(rng),
            path: any(rng),
        },
        710..=724 => Op::Readlink { path: any(rng) },
        725..=749 => Op::Chmod {
            path: any(rng),
            mode: file_mode(rng),
        },
        750..=774 => {
            let (atime, mtime) = times(rng);
            Op::Utimens {
                path: any(rng),
                atime,
                mtime,
                nofollow: rng.pct(30),
            }
        }
        775..=904 => Op::Stat {
            path: if rng.pct(15) { dir_path(rng) } else { any(rng) },
            follow: rng.pct(50),
        },
        905..=964 => Op::Readdir {
            path: if rng.pct(50) {
                P(dir_name(rng))
            } else {
                dir_path(rng)
            },
        },
        965..=967 => Op::Mkfifo {
            path: any(rng),
            mode: file_mode(rng),
        },
        968..=969 => Op::Fsync {
            path: any(rng),
            data_only: rng.pct(50),
        },
        970..=972 => Op::DirectWrite {
            path: any(rng),
            block: rng.below(64),
            blocks: rng.below(16) as usize + 1,
            seed: rng.next(),
        },
        973..=975 => Op::DirectRead {
            path: any(rng),
            block: rng.below(64),
            blocks: rng.below(16) as usize + 1,
        },
        976..=982 => Op::SetXattr {
            path: prefer_known(rng, 80),
            name: xattr_name(rng),
            len: if rng.pct(5) {
                3000
            } else {
                rng.below(200) as usize
            },
            seed: rng.next(),
            flags: rng.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
            nofollow: rng.pct(30),
        },
        983..=986 if !xattrs.is_empty() && rng.pct(70) => {
            let (path, name) = xattrs[rng.below(xattrs.len() as u64) as usize].clone();
            Op::GetXattr {
                path,
                name,
                size: if rng.pct(10) { 3 } else { 1 << 16 },
                nofollow: rng.pct(30),
            }
        }
        989..=990 if !xattrs.is_empty() && rng.pct(70) => {
            let (path, name) = xattrs[rng.below(xattrs.len() as u64) as usize].clone();
            Op::RemoveXattr {
                path,
                name,
                nofollow: rng.pct(30),
            }
        }
        983..=986 => Op::GetXattr {
            path: prefer_known(rng, 80),
            name: xattr_name(rng),
            size: if rng.pct(10) { 3 } else { 1 << 16 },
            nofollow: rng.pct(30),
        },
        987..=988 => Op::ListXattr {
            path: prefer_known(rng, 80),
            nofollow: rng.pct(30),
        },
        989..=990 => Op::RemoveXattr {
            path: prefer_known(rng, 80),
            name: xattr_name(rng),
            nofollow: rng.pct(30),
        },
        // Folders come back: without this the namespace fills with files and stays put.
        _ => Op::Mkdir {
            path: P(dir_name(rng)),
            mode: Mode(0o755),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The runner: both trees, the held descriptors, the log for failure messages.

struct Runner {
    test: &'static str,
    seed: u64,
    roots: [PathBuf; 2],
    held: Vec<Held>,
    /// Paths where operations recently succeeded.
    known: VecDeque<P>,
    /// Extended attributes recently set.
    xattrs: VecDeque<(P, &'static str)>,
    recent: VecDeque<String>,
    /// Per kind of operation: [both succeeded, both failed].
    counts: BTreeMap<&'static str, [u64; 2]>,
    done: u64,
}

impl Runner {
    fn apply(&mut self, label: &str, op: Op) {
        if let Op::HeldClose { slot } = op {
            let held = self.held.remove(slot);
            let [m, r] = held.files;
            let results = [close(m).map(|()| Val::Done), close(r).map(|()| Val::Done)];
            let op = format!("{op:?} ({})", held.what);
            return self.check(label, &op, "held-close", results);
        }
        let (a, fa) = exec(&op, &self.roots[0], &self.held, 0);
        let (b, fb) = exec(&op, &self.roots[1], &self.held, 1);
        let mut text = format!("{op:?}");
        match &op {
            Op::HeldWrite { slot, .. }
            | Op::HeldAppend { slot, .. }
            | Op::HeldRead { slot, .. }
            | Op::HeldTruncate { slot, .. }
            | Op::HeldStat { slot }
            | Op::HeldFsync { slot, .. }
            | Op::HeldChmod { slot, .. }
            | Op::HeldUtimens { slot, .. }
            | Op::HeldFallocate { slot, .. } => {
                text += &format!(" ({})", self.held[*slot].what);
            }
            Op::HeldCopy { from, to, .. } => {
                text += &format!(" ({} -> {})", self.held[*from].what, self.held[*to].what);
            }
            _ => {}
        }
        let ok = a.is_ok();
        self.check(label, &text, op.kind(), [a, b]);
        if let (true, Some(path)) = (ok, op.main_path()) {
            if self.known.len() == 48 {
                self.known.pop_front();
            }
            self.known.push_back(path.clone());
        }
        if let (true, Op::SetXattr { path, name, .. }) = (ok, &op) {
            if self.xattrs.len() == 8 {
                self.xattrs.pop_front();
            }
            self.xattrs.push_back((path.clone(), name));
        }
        if let (Some(m), Some(r), Op::Open { path, flags, .. }) = (fa, fb, &op) {
            if self.held.len() == MAX_HELD {
                self.held.remove(0);
            }
            self.held.push(Held {
                what: format!("{path:?} {flags:?} opened at {label}"),
                files: [m, r],
            });
        }
    }

    fn check(&mut self, label: &str, op: &str, kind: &'static str, results: [R; 2]) {
        let [a, b] = results;
        let line = format!("{label} {op} -> {:?}", a);
        if a != b {
            let mut detail = String::new();
            if let (Ok(Val::Data(x)), Ok(Val::Data(y))) = (&a, &b) {
                detail = describe_difference(x, y);
            }
            let held: Vec<&str> = self.held.iter().map(|h| h.what.as_str()).collect();
            let recent: Vec<&str> = self.recent.iter().map(String::as_str).collect();
            panic!(
                "the mount and the reference folder differ\n\
                 seed {seed:#x}, operation {label}: {op}\n  \
                   mount:     {a:?}\n  \
                   reference: {b:?}\n{detail}\
                 held descriptors (slot order): {held:#?}\n\
                 the operations before it (result as both saw it):\n  {}\n\
                 replay: ASME_RANDOM_SEED={seed:#x} ASME_RANDOM_OPS={ops} cargo test --test \
                 mount_random {test} -- --exact --nocapture",
                recent.join("\n  "),
                test = self.test,
                seed = self.seed,
                ops = self.done + 1,
            );
        }
        if self.recent.len() == 40 {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
        let entry = self.counts.entry(kind).or_default();
        entry[usize::from(a.is_err())] += 1;
    }

    fn close_all(&mut self) {
        while !self.held.is_empty() {
            let last = self.held.len() - 1;
            self.apply("end", Op::HeldClose { slot: last });
        }
    }
}

fn describe_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => {
            let end = (i + 16).min(a.len()).min(b.len());
            format!(
                "  first difference at byte {i}: mount {:02x?}, reference {:02x?}\n",
                &a[i..end],
                &b[i..end]
            )
        }
        None => format!(
            "  same bytes up to {}; lengths {} and {}\n",
            a.len().min(b.len()),
            a.len(),
            b.len()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Whole-tree comparison.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: u32,
    nlink: u64,
    size: u64,
    uid: u32,
    gid: u32,
    ino: u64,
    mtime: MTime,
    target: Option<Vec<u8>>,
    /// Extended attributes, names and values.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Every entry under `root` (root itself as the empty path), not following symlinks; the
/// first call that fails, if any.
fn walk(root: &Path) -> Result<BTreeMap<Vec<u8>, Entry>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(OsStr::from_bytes(&rel));
        let failed = |call: &str, e: &dyn fmt::Debug| format!("{call} {}: {e:?}", path.display());
        let m = fs::symlink_metadata(&path).map_err(|e| failed("lstat", &e))?;
        let kind = m.mode() & libc::S_IFMT;
        let target = if kind == libc::S_IFLNK {
            let t = fs::read_link(&path).map_err(|e| failed("readlink", &e))?;
            Some(t.into_os_string().into_encoded_bytes())
        } else {
            None
        };
        if kind == libc::S_IFDIR {
            for e in fs::read_dir(&path).map_err(|e| failed("opendir", &e))? {
                let name = e.map_err(|e| failed("readdir", &e))?.file_name();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend(name.into_encoded_bytes());
                stack.push(child);
            }
        }
        let mut xattrs = Vec::new();
        for name in listxattr(&path, true).map_err(|e| failed("listxattr", &e))? {
            let text = String::from_utf8(name.clone()).unwrap();
            let value =
                getxattr(&path, &text, 1 << 16, true).map_err(|e| failed("getxattr", &e))?;
            xattrs.push((name, value));
        }
        out.insert(
            rel,
            Entry {
                mode: m.mode(),
                nlink: m.nlink(),
                size: m.size(),
                uid: m.uid(),
                gid: m.gid(),
                ino: m.ino(),
                mtime: MTime::of(&m),
                target,
                xattrs,
            },
        );
    }
    Ok(out)
}

/// The first offset where two files differ, if they do (read in chunks; sizes already equal).
fn content_difference(a: &Path, b: &Path) -> Option<String> {
    let (mut fa, mut fb) = (File::open(a).ok()?, File::open(b).ok()?);
    let (mut ba, mut bb) = (vec![0; 1 << 20], vec![0; 1 << 20]);
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if ba[..na] != bb[..nb] {
            let i = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            let end = (i + 16).min(na).min(nb);
            return Some(format!(
                "contents differ at byte {}: {:02x?} vs {:02x?} (read {na} and {nb} bytes)",
                pos + i as u64,
                &ba[i..end],
                &bb[i..end]
            ));
        }
        if na == 0 {
            return None;
        }
        pos += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// For each path, the smallest path of its hard-link group (same inode) in its tree.
fn link_groups(tree: &BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut out = BTreeMap::new();
    for (path, e) in tree {
        if e.mode & libc::S_IFMT == libc::S_IFDIR {
            continue;
        }
        let rep = first.entry(e.ino).or_insert_with(|| path.clone());
        out.insert(path.clone(), rep.clone());
    }
    out
}

/// Compares `other` with the reference tree: the same entries with the same types, modes,
/// sizes, link counts, contents, symlink targets and hard-link groups. Owners are the
/// reference's, or `owner` for every entry when given (SOURCE's).
fn compare_trees(
    reference: &Path,
    other: &Path,
    owner: Option<(u32, u32)>,
    when: &str,
) -> Vec<String> {
    let (a, b) = match (walk(reference), walk(other)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return vec![format!("{when}: walking the trees: {e}")],
    };
    let mut problems = Vec::new();
    let show = |p: &[u8]| format!("\"{}\"", p.escape_ascii());
    let keys_a: BTreeSet<&Vec<u8>> = a.keys().collect();
    let keys_b: BTreeSet<&Vec<u8>> = b.keys().collect();
    for missing in keys_a.difference(&keys_b) {
        problems.push(format!(
            "{when}: {} missing in {}",
            show(missing),
            other.display()
        ));
    }
    for extra in keys_b.difference(&keys_a) {
        problems.push(format!(
            "{when}: {} only in {}",
            show(extra),
            other.display()
        ));
    }
    for (path, ea) in &a {
        let Some(eb) = b.get(path) else { continue };
        let expected_owner = owner.unwrap_or((ea.uid, ea.gid));
        let same = ea.mode == eb.mode
            && ea.nlink == eb.nlink
            && ea.size == eb.size
            && ea.target == eb.target
            && ea.mtime == eb.mtime
            && ea.xattrs == eb.xattrs
            && (eb.uid, eb.gid) == expected_owner;
        if !same {
            let describe = |e: &Entry| {
                format!(
                    "{{mode 0o{:o} nlink {} size {} owner {}:{} mtime {:?} target {:?} xattrs \
                     {:?}}}",
                    e.mode,
                    e.nlink,
                    e.size,
                    e.uid,
                    e.gid,
                    e.mtime,
                    e.target.as_ref().map(|t| t.escape_ascii().to_string()),
                    e.xattrs
                        .iter()
                        .map(|(n, v)| (n.escape_ascii().to_string(), v.len()))
                        .collect::<Vec<_>>(),
                )
            };
            problems.push(format!(
                "{when}: {}: reference {}, {} {} (owner expected {}:{})",
                show(path),
                describe(ea),
                other.display(),
                describe(eb),
                expected_owner.0,
                expected_owner.1,
            ));
            continue;
        }
        if ea.mode & libc::S_IFMT == libc::S_IFREG {
            let (pa, pb) = (
                reference.join(OsStr::from_bytes(path)),
                other.join(OsStr::from_bytes(path)),
            );
            if let Some(d) = content_difference(&pa, &pb) {
                problems.push(format!("{when}: {}: {d}", show(path)));
            }
        }
    }
    let (ga, gb) = (link_groups(&a), link_groups(&b));
    for (path, rep) in &ga {
        if let Some(other_rep) = gb.get(path)
            && ga.get(other_rep) != Some(rep)
        {
            problems.push(format!(
                "{when}: {} is a hard link of {} in the reference but of {} in {}",
                show(path),
                show(rep),
                show(other_rep),
                other.display()
            ));
        }
    }
    problems
}

fn assert_no_problems(problems: &[String], run: &Runner) {
    assert!(
        problems.is_empty(),
        "the trees differ after {} operations, seed {:#x} ({} differences):\n{}\nreplay: \
         ASME_RANDOM_SEED={:#x} ASME_RANDOM_OPS={} cargo test --test mount_random {} -- --exact \
         --nocapture",
        run.done,
        run.seed,
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        run.seed,
        run.done,
        run.test,
    );
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// The mount as root, as `asme mount` makes it: file data through FUSE passthrough (the kernel
/// reads and writes SOURCE's file itself), descriptors for every file the kernel knows, and
/// requests over io_uring (the fuse module's switch is on here).
#[test]
fn randomised_operations_match_a_plain_folder() {
    randomised(
        "randomised_operations_match_a_plain_folder",
        "random",
        &[],
        None,
    );
}

/// The same over `/dev/fuse`, the transport of kernels without io_uring (or with the switch
/// off), where fuser serves every request.
#[test]
fn randomised_operations_over_dev_fuse_match_a_plain_folder() {
    randomised(
        "randomised_operations_over_dev_fuse_match_a_plain_folder",
        "random-dev",
        &["nouring"],
        None,
    );
}

/// The mount as an ordinary user gets it: no passthrough (every read and write goes through
/// the server) and a limited number of descriptors. The server keeps descriptors for files
/// within half its limit, so with 1800 it holds 900: fewer than the files this run leaves
/// (about 1,200, with about 700 folders, which always hold theirs), so the others are closed
/// and found again by folder and name.
#[test]
fn randomised_operations_through_the_server_with_few_descriptors_match_a_plain_folder() {
    randomised(
        "randomised_operations_through_the_server_with_few_descriptors_match_a_plain_folder",
        "random-server",
        &["nopassthrough"],
        Some(1800),
    );
}

/// `ASME_RANDOM_OPS` operations (default 100,000) chosen by the seed `ASME_RANDOM_SEED`
/// (default: from the clock), applied to the mount (with `options`, and any in
/// `ASME_RANDOM_MOUNT_OPTIONS`; the server's open-file limit `fd_limit`, or
/// `ASME_RANDOM_FD_LIMIT`) and to a reference folder, compared one by one and as whole trees
/// every 25,000 operations and at the end.
fn randomised(test: &'static str, label: &str, options: &[&str], fd_limit: Option<u64>) {
    let seed = seed_from_env();
    let ops = env_u64("ASME_RANDOM_OPS").unwrap_or(100_000);
    let mut options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    options.extend(
        std::env::var("ASME_RANDOM_MOUNT_OPTIONS")
            .ok()
            .filter(|o| !o.is_empty()),
    );
    let fd_limit = env_u64("ASME_RANDOM_FD_LIMIT").or(fd_limit);
    eprintln!(
        "{test}: seed {seed:#x}, {ops} operations, mount options {options:?}, server's \
         open-file limit {fd_limit:?} (ASME_RANDOM_SEED, ASME_RANDOM_OPS, \
         ASME_RANDOM_MOUNT_OPTIONS, ASME_RANDOM_FD_LIMIT)"
    );
    let fx = Fixture::new(label);
    fx.mount(&options, fd_limit);
    let started = Instant::now();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    RUN_STARTED.fetch_min(now.as_secs() as i64, Ordering::Relaxed);
    let mut run = Runner {
        test,
        seed,
        roots: [fx.mnt.clone(), fx.reference.clone()],
        held: Vec::new(),
        known: VecDeque::new(),
        xattrs: VecDeque::new(),
        recent: VecDeque::new(),
        counts: BTreeMap::new(),
        done: 0,
    };
    for d in 0..8 {
        run.apply(
            "setup",
            Op::Mkdir {
                path: P(format!("d{d}").into_bytes()),
                mode: Mode(0o755),
            },
        );
        for e in 0..3 {
            run.apply(
                "setup",
                Op::Mkdir {
                    path: P(format!("d{d}/d{e}").into_bytes()),
                    mode: Mode(0o755),
                },
            );
        }
    }
    let mut rng = Rng(seed);
    let checkpoint = 25_000;
    while run.done < ops {
        let known: Vec<P> = run.known.iter().cloned().collect();
        let xattrs: Vec<(P, &str)> = run.xattrs.iter().cloned().collect();
        let op = generate(&mut rng, run.held.len(), &known, &xattrs);
        let label = format!("#{}", run.done);
        run.apply(&label, op);
        run.done += 1;
        if run.done.is_multiple_of(checkpoint) && run.done < ops {
            let problems = [
                compare_trees(&fx.reference, &fx.mnt, None, &label),
                compare_trees(&fx.reference, &fx.src, Some((OWNER, OWNER)), &label),
            ]
            .concat();
            assert_no_problems(&problems, &run);
            eprintln!(
                "  {} operations, trees equal ({:.1?})",
                run.done,
                started.elapsed()
            );
        }
    }
    run.close_all();
    let elapsed_ops = started.elapsed();
    let problems = [
        compare_trees(&fx.reference, &fx.mnt, None, "at the end"),
        compare_trees(&fx.reference, &fx.src, Some((OWNER, OWNER)), "at the end"),
    ]
    .concat();
    assert_no_problems(&problems, &run);
    let root = fs::metadata(&fx.mnt).unwrap();
    assert_eq!((root.uid(), root.gid()), (0, 0), "the mount's root");
    let entries = walk(&fx.src).unwrap().len();
    let mut summary = String::new();
    for (kind, [ok, failed]) in &run.counts {
        summary += &format!("\n  {kind:<22} {ok:>6} ok {failed:>6} failed alike");
    }
    eprintln!(
        "{test}: {ops} operations in {elapsed_ops:.1?}, trees equal ({entries} \
         entries on SOURCE, all {OWNER}:{OWNER}), total {:.1?}{summary}",
        started.elapsed()
    );
    fx.unmount();
}

const THREADS: usize = 8;
const STRIPE: usize = 5000;
const STRIPES_PER_THREAD: usize = 64;
const RECORD: usize = 777;
const RECORDS_PER_THREAD: usize = 300;

/// The `len` bytes a test file holds from `start`: they depend on the file (`tag`) and the
/// offset, so a chunk written at the wrong place, twice, or torn shows.
fn pattern(tag: u64, start: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut off = start & !7;
    while off < start + len as u64 {
        out.extend(
            Rng(tag.wrapping_mul(0x1_0000_0001) ^ (off >> 3))
                .next()
                .to_le_bytes(),
        );
        off += 8;
    }
    let skip = (start & 7) as usize;
    out.drain(..skip);
    out.truncate(len);
    out
}

fn distinct_size(t: usize) -> u64 {
    (2 << 20) + 4099 * t as u64 + 123
}

fn record(t: usize, seq: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD);
    r.push(b'<');
    r.push(t as u8);
    r.extend((seq as u32).to_le_bytes());
    r.extend(pattern((t * 100_000 + seq) as u64, 0, RECORD - 7));
    r.push(b'>');
    r
}

/// Checks the O_APPEND file: the right length, every record whole, each exactly once, and each
/// thread's records in the order it wrote them.
fn check_appended(bytes: &[u8], where_: &str) {
    assert_eq!(
        bytes.len(),
        THREADS * RECORDS_PER_THREAD * RECORD,
        "{where_}: length of the O_APPEND file"
    );
    let mut next = [0usize; THREADS];
    for (i, rec) in bytes.chunks(RECORD).enumerate() {
        let t = rec[1] as usize;
        assert!(
            rec[0] == b'<' && t < THREADS,
            "{where_}: record {i} (byte {}) is not a record start: {:02x?}",
            i * RECORD,
            &rec[..8]
        );
        let seq = u32::from_le_bytes(rec[2..6].try_into().unwrap()) as usize;
        assert_eq!(
            seq, next[t],
            "{where_}: record {i}: thread {t}'s record {seq} where {} was due",
            next[t]
        );
        assert!(
            rec == record(t, seq).as_slice(),
            "{where_}: record {i} (thread {t}, #{seq}) is damaged (torn or mixed with another)"
        );
        next[t] += 1;
    }
}

fn check_file(path: &Path, tag: u64, size: u64) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() as u64, size, "{}: size", path.display());
    let expected = pattern(tag, 0, size as usize);
    if bytes != expected {
        panic!(
            "{}: wrong contents\n{}",
            path.display(),
            describe_difference(&bytes, &expected)
        );
    }
}

/// Thread `t`'s work, interleaved at random: its own file in random-order chunks, its stripes
/// of the shared file through its own descriptor and through the shared one, its records.
fn writer(t: usize, seed: u64, mnt: &Path, shared_fd: &File) {
    let mut rng = Rng(seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9));
    let tag = 1000 + t as u64;
    let size = distinct_size(t);
    let own = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mnt.join(format!("distinct-{t}")))
        .unwrap();
    let shared = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("shared"))
        .unwrap();
    let append = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("append"))
        .unwrap();
    // The tasks: (kind, a, b).
    let mut tasks: Vec<(u8, u64, u64)> = Vec::new();
    let mut at = 0;
    while at < size {
        let len = (rng.below(64 << 10) + 1).min(size - at);
        tasks.push((0, at, len));
        at += len;
    }
    for k in 0..STRIPES_PER_THREAD {
        let stripe = (k * THREADS + t) as u64;
        tasks.push((1, stripe, 0));
        tasks.push((2, stripe, 0));
    }
    for seq in 0..RECORDS_PER_THREAD {
        tasks.push((3, seq as u64, 0));
    }
    // Shuffle, keeping the records in order (each thread's appends must stay in its order).
    for i in (1..tasks.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        tasks.swap(i, j);
    }
    for (seq, task) in tasks.iter_mut().filter(|t| t.0 == 3).enumerate() {
        task.1 = seq as u64;
    }
    for (kind, a, b) in tasks {
        match kind {
            0 => {
                let n = own.write_at(&pattern(tag, a, b as usize), a).unwrap();
                assert_eq!(n as u64, b, "thread {t}: short pwrite");
            }
            1 | 2 => {
                let off = a * STRIPE as u64;
                let tag = if kind == 1 { 1 } else { 2 };
                let file = if kind == 1 { &shared } else { shared_fd };
                let n = file.write_at(&pattern(tag, off, STRIPE), off).unwrap();
                assert_eq!(n, STRIPE, "thread {t}: short pwrite");
            }
            _ => {
                let n = (&append).write(&record(t, a as usize)).unwrap();
                assert_eq!(n, RECORD, "thread {t}: short append");
            }
        }
    }
    // Read back through the descriptor that wrote, then through a fresh one.
    let mut back = vec![0; size as usize];
    own.read_exact_at(&mut back, 0).unwrap();
    assert!(
        back == pattern(tag, 0, size as usize),
        "thread {t}: distinct-{t} read back through its own descriptor differs\n{}",
        describe_difference(&back, &pattern(tag, 0, size as usize))
    );
    own.sync_all().unwrap();
    drop(own);
    check_file(&mnt.join(format!("distinct-{t}")), tag, size);
}

/// Both ways data can go: FUSE passthrough (root's default) and through the server.
#[test]
fn parallel_writers_on_distinct_and_shared_files() {
    let seed = seed_from_env();
    eprintln!("parallel writers: seed {seed:#x} (ASME_RANDOM_SEED)");
    parallel_writers(seed, "parallel", &[]);
    parallel_writers(seed, "parallel-nopt", &["nopassthrough".to_owned()]);
    parallel_writers(seed, "parallel-dev", &["nopassthrough,nouring".to_owned()]);
}

fn parallel_writers(seed: u64, label: &str, options: &[String]) {
    let fx = Fixture::new(label);
    fx.mount(options, None);
    let started = Instant::now();
    let mnt = &fx.mnt;
    for name in ["shared", "shared-fd", "append"] {
        File::create(mnt.join(name)).unwrap();
    }
    let shared_fd = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("shared-fd"))
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let shared_fd = &shared_fd;
            s.spawn(move || writer(t, seed, mnt, shared_fd));
        }
    });
    drop(shared_fd);
    let shared_size = (THREADS * STRIPES_PER_THREAD * STRIPE) as u64;
    for root in [&fx.mnt, &fx.src] {
        for t in 0..THREADS {
            check_file(
                &root.join(format!("distinct-{t}")),
                1000 + t as u64,
                distinct_size(t),
            );
        }
        check_file(&root.join("shared"), 1, shared_size);
        check_file(&root.join("shared-fd"), 2, shared_size);
        check_appended(
            &fs::read(root.join("append")).unwrap(),
            &root.display().to_string(),
        );
    }
    for (path, _) in walk(&fx.src).unwrap() {
        let p = fx.src.join(OsStr::from_bytes(&path));
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (OWNER, OWNER),
            "{} on SOURCE",
            p.display()
        );
        let m = fs::symlink_metadata(fx.mnt.join(OsStr::from_bytes(&path))).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{path:?} in the mount");
    }
    eprintln!(
        "parallel writers (mount options {options:?}): {THREADS} threads, verified through the \
         mount and on SOURCE in {:.1?}",
        started.elapsed()
    );
    fx.unmount();
}

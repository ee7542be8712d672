//! `asme mount` and `asme umount`: options, mounting, the server's lifetime, recovery.
//!
//! Everything that can be checked (`check`) is checked before anything is mounted, so a
//! refusal is one line and leaves nothing behind. Without `--foreground` the server detaches,
//! and the command returns only once the mount is up (or with the server's error). What the
//! mount serves is `MappedFs`'s business.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::check::{check_dev_fuse, check_mountpoint, check_user_mount, fusermount};
use super::map::OwnerMap;
use super::{MappedFs, Settings};
use crate::owner;

/// The mount type the kernel shows (`fuse.` + subtype): how `asme umount` knows its own.
pub const FSTYPE: &str = "fuse.asme";

/// What `asme mount` was asked.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub source: PathBuf,
    pub mountpoint: PathBuf,
    pub map: Option<String>,
    pub options: Vec<String>,
    pub foreground: bool,
    /// (internal) the detached server: report readiness on stdout, then detach from it.
    pub notify_ready: bool,
}

/// Parsed `-o` options.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    read_only: bool,
    acl: SessionACL,
    ttl: Duration,
    passthrough: bool,
    dev: bool,
    suid: bool,
    threads: usize,
}

const KNOWN_OPTIONS: &str = "ro, rw, allow_other, allow_root, private, timeout=SECONDS, \
                             nopassthrough, dev, suid, threads=N";

fn parse_options(given: &[String]) -> Result<Options> {
    let mut o = Options {
        read_only: false,
        // Docker (root) and the container's users must reach the mount.
        acl: SessionACL::All,
        ttl: Duration::from_secs(1),
        passthrough: true,
        dev: false,
        suid: false,
        threads: std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2)
            * 2,
    };
    for opt in given
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        match opt.split_once('=') {
            None => match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "allow_other" => o.acl = SessionACL::All,
                "allow_root" => o.acl = SessionACL::RootAndOwner,
                "private" => o.acl = SessionACL::Owner,
                "nopassthrough" => o.passthrough = false,
                "dev" => o.dev = true,
                "suid" => o.suid = true,
                _ => bail!("unknown mount option {opt:?} (known: {KNOWN_OPTIONS})"),
            },
            Some(("timeout", v)) => {
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| anyhow!("bad mount option {opt:?}: seconds expected"))?;
                o.ttl = Duration::from_secs_f64(secs);
            }
            Some(("threads", v)) => {
                o.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| anyhow!("bad mount option {opt:?}: 1 to 256 threads"))?;
            }
            Some(_) => bail!("unknown mount option {opt:?} (known: {KNOWN_OPTIONS})"),
        }
    }
    Ok(o)
}

/// `asme mount`.
pub fn main(req: &MountRequest) -> Result<()> {
    if !req.foreground && !req.notify_ready {
        return detach(req);
    }
    if req.notify_ready {
        // Not the terminal's: Ctrl-C or a closed terminal must not take the mount down.
        let _ = rustix::process::setsid();
    }
    let options = parse_options(&req.options)?;
    let (uid, gid) = crate::sys::real_ids();
    let map = match &req.map {
        Some(spec) => OwnerMap::parse(spec, &owner::host_passwd(), &owner::host_group())?,
        None => OwnerMap::invoker_as_root(uid, gid),
    };
    let source = open_source(&req.source)?;
    let mountpoint = std::path::absolute(&req.mountpoint)
        .with_context(|| format!("{}", req.mountpoint.display()))?;
    check_mountpoint(&mountpoint)?;
    check_dev_fuse()?;
    let as_root = rustix::process::geteuid().is_root();
    if !as_root {
        check_user_mount(options.acl)?;
    }

    // The creator's mode must reach SOURCE exactly: the kernel applied the creator's umask.
    rustix::process::umask(Mode::empty());
    raise_descriptor_limit();
    // Signals are taken by one thread (below); every server thread inherits the mask.
    let mut signals = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(sig);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).context("signal mask")?;

    let settings = Settings {
        map,
        ttl: options.ttl,
        passthrough: options.passthrough,
    };
    let fs = MappedFs::new(source, settings).context("source")?;
    let config = session_config(req, &options, as_root);

    let mut session =
        fuser::Session::new(fs, &mountpoint, &config).map_err(|e| mount_error(e, &mountpoint))?;
    let mut unmounter = session.unmount_callable();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            let _ = unmounter.unmount();
        }
    });
    if req.notify_ready {
        report_ready();
    }
    session.run().context("serving the mount")?;
    Ok(())
}

/// The session's mount options and threads, from `-o`.
fn session_config(req: &MountRequest, options: &Options, as_root: bool) -> Config {
    let mount_options = vec![
        MountOption::FSName(req.source_display()),
        // fusermount passes the subtype on; a direct mount(2) needs it as a kernel option.
        if as_root {
            MountOption::CUSTOM("subtype=asme".into())
        } else {
            MountOption::Subtype("asme".into())
        },
        MountOption::DefaultPermissions,
        if options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        if options.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if options.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
    ];
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = options.acl;
    config.n_threads = Some(options.threads);
    config.clone_fd = true;
    config
}

impl MountRequest {
    fn source_display(&self) -> String {
        let abs = std::path::absolute(&self.source).unwrap_or_else(|_| self.source.clone());
        // fsname is a mount option: a comma or space would split it.
        abs.to_string_lossy().replace([',', ' ', '\t', '\n'], "_")
    }
}

/// Without `--foreground`, the server is this program again, detached (`start_server`).
fn detach(req: &MountRequest) -> Result<()> {
    let exe = std::env::current_exe().context("finding asme's own binary")?;
    let mut args: Vec<OsString> = Vec::new();
    if let Some(map) = &req.map {
        args.extend(["--map".into(), map.into()]);
    }
    for o in &req.options {
        args.extend(["-o".into(), o.into()]);
    }
    args.extend([
        "--".into(),
        req.source.clone().into_os_string(),
        req.mountpoint.clone().into_os_string(),
    ]);
    start_server(&exe, &args)
}

/// The server keeps descriptors within half its open-file limit (see `node`); a higher limit
/// means fewer reopens. As root up to the kernel's `nr_open`, otherwise the hard limit.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    if rustix::process::geteuid().is_root() {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(nr_open),
                maximum: Some(nr_open),
            },
        );
    }
    crate::sys::fs::raise_open_files_limit();
}

fn report_ready() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    // Detach from the caller's pipes so it sees EOF and nothing holds its terminal.
    if let Ok(null) = rustix::fs::open("/dev/null", OFlags::RDWR, Mode::empty()) {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

fn open_source(source: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        source,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => anyhow!("{}: no such folder", source.display()),
        Errno::NOTDIR => anyhow!("{}: not a folder", source.display()),
        e => anyhow!("{}: {}", source.display(), std::io::Error::from(e)),
    })
}

/// Whether this process can make a mount that docker (root) can use: what `asme run` asks
/// before it picks the fuse strategy.
pub fn usable_for_docker() -> Result<()> {
    check_dev_fuse()?;
    if !rustix::process::geteuid().is_root() {
        check_user_mount(parse_options(&[])?.acl)?;
    }
    Ok(())
}

/// A detached `asme mount` of `source` at `mountpoint` (which must exist), with `map`:
/// what `asme run`'s fuse strategy starts for each bind source.
pub fn spawn_server(exe: &Path, map: &OwnerMap, source: &Path, mountpoint: &Path) -> Result<()> {
    let args = [
        "--map".into(),
        map.to_string().into(),
        "--".into(),
        source.into(),
        mountpoint.into(),
    ];
    start_server(exe, &args).with_context(|| format!("asme mount of {}", source.display()))
}

/// Runs `asme mount --notify-ready ARGS`, the server, and returns once its first line on
/// stdout says the mount is up, or with its one-line error (which it writes on stderr, then
/// exits).
fn start_server(exe: &Path, args: &[OsString]) -> Result<()> {
    let mut child = Command::new(exe)
        .args(["mount", "--notify-ready"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the mount server")?;
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if line.trim() == "ready" {
        return Ok(());
    }
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut err);
    let _ = child.wait();
    let err = err
        .lines()
        .next()
        .unwrap_or("the mount server failed")
        .trim();
    bail!("{}", err.strip_prefix("asme: ").unwrap_or(err))
}

fn mount_error(err: std::io::Error, mountpoint: &Path) -> anyhow::Error {
    // fusermount prints its own reason; fuser passes it on in the message.
    anyhow!("mounting on {}: {err}", mountpoint.display())
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub target: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The mount on top at `target`, if `target` is a mount point.
pub fn mount_at(target: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.target == target)
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some(MountEntry {
                target: PathBuf::from(unescape(target)),
                fstype: unescape(fstype),
                source: unescape(source),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `asme umount`: only asme's own mounts; a stale one (server killed) is recovered too.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let target =
        std::path::absolute(mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    let Some(m) = mount_at(&target) else {
        bail!("{}: not a mount point", target.display());
    };
    if m.fstype != FSTYPE {
        bail!(
            "{}: a {} mount, not asme's; asme umount leaves it alone",
            target.display(),
            m.fstype
        );
    }
    if rustix::process::geteuid().is_root() {
        let flags = if lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        return rustix::mount::unmount(&target, flags).map_err(|e| match e {
            Errno::BUSY => anyhow!(
                "{}: busy (a process works in it or holds a file open); `asme umount --lazy` \
                 detaches it now and lets it go when they finish",
                target.display()
            ),
            e => anyhow!("{}: {}", target.display(), std::io::Error::from(e)),
        });
    }
    let fusermount = fusermount().ok_or_else(|| anyhow!("no fusermount3 or fusermount found"))?;
    let mut cmd = Command::new(fusermount);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .context("running fusermount")?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg.lines().next().unwrap_or("failed").trim();
        bail!("{}: {line}", target.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_unknown_ones() {
        let o = parse_options(&["ro,allow_root".into(), "timeout=0.5,threads=3".into()]).unwrap();
        assert!(o.read_only);
        assert_eq!(o.acl, SessionACL::RootAndOwner);
        assert_eq!(o.ttl, Duration::from_millis(500));
        assert_eq!(o.threads, 3);
        let d = parse_options(&[]).unwrap();
        assert_eq!(d.acl, SessionACL::All);
        assert!(d.passthrough && !d.read_only && !d.dev && !d.suid);
        for bad in ["nonsense", "timeout=x", "timeout=-1", "threads=0", "uid=3"] {
            assert!(parse_options(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_lines_are_read_with_escapes() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.asme /src/x rw,user_id=0\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        let all = parse_mountinfo(text);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].target, PathBuf::from("/mnt/a b"));
        assert_eq!(all[0].fstype, FSTYPE);
        assert_eq!(all[0].source, "/src/x");
    }
}

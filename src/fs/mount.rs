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
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fuser::{Config, MountOption, SessionACL};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::check::{check_dev_fuse, check_mountpoint, check_user_mount, fusermount};
use super::map::OwnerMap;
use super::options::{Options, parse_options};
use super::owners::Recorded;
use super::server::FuseServer;
use super::{MappedFs, Settings};
use crate::owner::{self, Owner};

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
    /// (internal, root only) serve as this user once mounted.
    pub serve_as: Option<Owner>,
    /// (internal) mount and serve in the user and mount namespaces of this process: a
    /// rootless engine's daemon, which this user owns.
    pub enter: Option<u32>,
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
    let mut options = parse_options(&req.options)?;
    let entered;
    let req = match req.enter {
        Some(pid) => {
            entered = enter_namespaces(req, pid)?;
            // Passthrough needs CAP_SYS_ADMIN in the host's namespace.
            options.passthrough = false;
            &entered
        }
        None => req,
    };
    let (uid, gid) = crate::sys::real_ids();
    let as_root = rustix::process::geteuid().is_root();
    if req.serve_as.is_some() {
        if !as_root {
            bail!("--serve-as needs root (it mounts as root, then serves as that user)");
        }
        // Opening a backing file for passthrough needs CAP_SYS_ADMIN, which the user lacks.
        options.passthrough = false;
    }
    let map = match &req.map {
        Some(spec) => OwnerMap::parse(spec, &owner::host_passwd(), &owner::host_group())?,
        None => OwnerMap::invoker_as_root(uid, gid),
    };
    // Checked before mounting; as another user it can only be opened once mounted.
    let source = match req.serve_as {
        None => Some(open_source(&req.source)?),
        Some(_) => None,
    };
    let mountpoint = std::path::absolute(&req.mountpoint)
        .with_context(|| format!("{}", req.mountpoint.display()))?;
    check_mountpoint(&mountpoint)?;
    // As mountinfo names it (symlinks resolved); read before mounting, while no server is
    // needed to answer.
    let listed_as = std::fs::canonicalize(&mountpoint).unwrap_or_else(|_| mountpoint.clone());
    check_dev_fuse()?;
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

    let recorded = if options.record_owners {
        Some(recorded_as(&map, req.serve_as, as_root)?)
    } else {
        None
    };
    let settings = Settings {
        map,
        ttl: options.ttl,
        watch: options.watch,
        passthrough: options.passthrough,
        uring: options.uring,
        poll: options.poll,
        recorded,
    };
    let config = session_config(req, &options, as_root);
    let (session, fs) = match (source, req.serve_as) {
        (Some(source), _) => {
            let fs = Arc::new(MappedFs::new(source, settings).context("source")?);
            let session = fuser::Session::new(FuseServer(fs.clone()), &mountpoint, &config)
                .map_err(|e| mount_error(e, &mountpoint))?;
            (session, fs)
        }
        (None, Some(owner)) => {
            mount_then_serve_as(req, owner, &mountpoint, &options, settings, config)?
        }
        (None, None) => unreachable!("SOURCE is opened first unless serving as a user"),
    };
    // The mount at the mount point now is this one (see the end).
    let mounted_here = mount_at(&listed_as).map(|m| m.dev);
    let dev = serve_beside(&fs, &session)?;
    if let Some((watch, nodes)) = fs.watch_parts() {
        let notifier = session.notifier();
        std::thread::spawn(move || super::watch::serve(watch, nodes, notifier));
    }
    let serving_as_user = req.serve_as.is_some();
    let at = listed_as.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            if serving_as_user {
                // Not root any more: the mount is root's to remove (the volume driver does).
                std::process::exit(0);
            }
            let _ = umount(&at, false, None);
        }
    });
    if req.notify_ready {
        report_ready();
    }
    // fuser unmounts its mount point by path when a session ends, and cannot tell whether
    // its mount is still there: once `asme umount` has taken it down, it would take down
    // whatever was mounted there since (a quick remount; this server may take seconds to
    // close its files). So the mount is the background session's, whose thread leaves it
    // alone, and is unmounted here only while the connection stands, which proves the
    // mount there is this one (its device number is no one else's meanwhile): a session
    // that failed.
    let mut session = session.spawn().context("serving the mount")?;
    let serving = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
    let served = serving
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the server's thread panicked")));
    if crate::sys::fuse::connected(std::os::fd::AsFd::as_fd(&*dev))
        && mounted_here.is_some()
        && mount_at(&listed_as).map(|m| m.dev) == mounted_here
    {
        drop(session);
    } else {
        std::mem::forget(session);
    }
    served.context("serving the mount")?;
    Ok(())
}

/// `--serve-as`: mounts as root over a `/dev/fuse` of its own (as fusermount would for the
/// user: `user_id` is theirs), then becomes the user, and only then opens SOURCE, which
/// only they may enter. If SOURCE fails then, the mount is left for root (the volume
/// driver) to remove: this process may not any more.
fn mount_then_serve_as(
    req: &MountRequest,
    owner: Owner,
    mountpoint: &Path,
    options: &Options,
    settings: Settings,
    config: Config,
) -> Result<(fuser::Session<FuseServer>, Arc<MappedFs>)> {
    let dev = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .context("opening /dev/fuse")?;
    let mut fuse_options = format!(
        "user_id={},group_id={},default_permissions",
        owner.uid, owner.gid
    );
    if options.acl != SessionACL::Owner {
        fuse_options.push_str(",allow_other");
    }
    crate::sys::mount::mount_fuse(
        std::os::fd::AsFd::as_fd(&dev),
        mountpoint,
        &req.source_display(),
        "asme",
        &fuse_options,
        options.read_only,
    )
    .map_err(|e| mount_error(e, mountpoint))?;
    // Before any thread starts, so that every server thread is the user.
    crate::sys::become_user(owner.uid, owner.gid)
        .with_context(|| format!("becoming {owner} to serve"))?;
    let fs = Arc::new(MappedFs::new(open_source(&req.source)?, settings).context("source")?);
    let session = fuser::Session::from_fd(FuseServer(fs.clone()), dev, options.acl, config)
        .context("starting the FUSE session")?;
    Ok((session, fs))
}

/// Once INIT is done: the session's device for passthrough's backing files, and the io_uring
/// queues if the kernel agreed to them (else, or if they fail, fuser's loop serves all).
/// Returns the session's device.
fn serve_beside(fs: &Arc<MappedFs>, session: &fuser::Session<FuseServer>) -> Result<Arc<OwnedFd>> {
    let dev = std::os::fd::AsFd::as_fd(session)
        .try_clone_to_owned()
        .context("/dev/fuse")?;
    let dev = Arc::new(dev);
    fs.set_device(dev.clone());
    if fs.uring_agreed()
        && let Err(e) = super::ring::start(fs.clone(), dev.clone())
    {
        eprintln!("asme mount: io_uring: {e}; serving over /dev/fuse");
    }
    Ok(dev)
}

/// With `-o record_owners`, whom SOURCE's files are stored as: the server's user when it is
/// not root, else the first pair of the map (`--map OWNER/SHOWN`, as asme run passes it).
fn recorded_as(map: &OwnerMap, serve_as: Option<Owner>, as_root: bool) -> Result<Recorded> {
    let disk = match (serve_as, as_root) {
        (Some(owner), _) => (owner.uid, owner.gid),
        (None, false) => crate::sys::real_ids(),
        (None, true) => map.first_source().ok_or_else(|| {
            anyhow!("-o record_owners as root needs --map OWNER/SHOWN naming whose the files are")
        })?,
    };
    Ok(Recorded { disk })
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
    if let Some(pid) = req.enter {
        args.extend(["--enter-namespaces-of".into(), pid.to_string().into()]);
    }
    args.extend([
        "--".into(),
        req.source.clone().into_os_string(),
        req.mountpoint.clone().into_os_string(),
    ]);
    start_server(&exe, &args).map(drop)
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

/// The request with absolute paths, in the namespaces of `pid` (still one thread: setns
/// refuses a process with more). Inside, the user is root over their own files and their
/// subordinate ids, and the mount is one the engine there sees.
fn enter_namespaces(req: &MountRequest, pid: u32) -> Result<MountRequest> {
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let entered = MountRequest {
        source: absolute(&req.source)?,
        mountpoint: absolute(&req.mountpoint)?,
        enter: None,
        ..req.clone()
    };
    crate::sys::mount::enter_user_and_mount_namespaces(pid)
        .with_context(|| format!("entering the namespaces of the engine's process {pid}"))?;
    Ok(entered)
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
/// before it picks the fuse strategy. In a rootless engine's namespaces (`entering`) the
/// user mounts as root there, without fusermount or `user_allow_other`.
pub fn usable_for_docker(entering: bool) -> Result<()> {
    check_dev_fuse()?;
    if !entering && !rustix::process::geteuid().is_root() {
        check_user_mount(parse_options(&[])?.acl)?;
    }
    Ok(())
}

/// How a server started by [`spawn_server`] serves, beyond its map.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerOptions {
    pub read_only: bool,
    /// `-o record_owners`: SOURCE stays the owner's, the container's chowns are recorded.
    pub record_owners: bool,
    /// Serve as this user once mounted (root only): see `--serve-as`.
    pub serve_as: Option<Owner>,
    /// Mount and serve in the namespaces of this rootless engine's daemon.
    pub enter: Option<u32>,
}

/// A detached `asme mount` of `source` at `mountpoint` (which must exist), with `map`: what
/// `asme run`'s fuse strategy and the volume driver start. Returns once the mount is up,
/// with the server (the caller may wait for it: it exits when the mount goes).
pub fn spawn_server(
    exe: &Path,
    map: &OwnerMap,
    source: &Path,
    mountpoint: &Path,
    how: ServerOptions,
) -> Result<Child> {
    let mut args: Vec<OsString> = vec!["--map".into(), map.to_string().into()];
    if how.read_only {
        args.extend(["-o".into(), "ro".into()]);
    }
    if how.record_owners {
        args.extend(["-o".into(), "record_owners".into()]);
    }
    if let Some(owner) = how.serve_as {
        args.extend(["--serve-as".into(), owner.to_string().into()]);
    }
    if let Some(pid) = how.enter {
        args.extend(["--enter-namespaces-of".into(), pid.to_string().into()]);
    }
    args.extend(["--".into(), source.into(), mountpoint.into()]);
    start_server(exe, &args).with_context(|| format!("asme mount of {}", source.display()))
}

/// Runs `asme mount --notify-ready ARGS`, the server, and returns it once its first line on
/// stdout says the mount is up, or with its one-line error (which it writes on stderr, then
/// exits).
fn start_server(exe: &Path, args: &[OsString]) -> Result<Child> {
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
        return Ok(child);
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
    /// The filesystem's device number, `major:minor`.
    pub dev: String,
    pub target: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The filesystem's own options (FUSE: `user_id=`, `group_id=`, ...).
    pub super_options: String,
}

/// The mount on top at `target`, if `target` is a mount point.
pub fn mount_at(target: &Path) -> Option<MountEntry> {
    mounts().into_iter().rfind(|m| m.target == target)
}

/// This process's mounts, in mountinfo's order (a later one covers an earlier one).
pub fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let dev = left.nth(2)?;
            let target = left.nth(1)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            let super_options = right.next().unwrap_or_default();
            Some(MountEntry {
                dev: dev.to_owned(),
                target: PathBuf::from(unescape(target)),
                fstype: unescape(fstype),
                source: unescape(source),
                super_options: unescape(super_options),
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
/// With `enter`, in the namespaces of that rootless engine's daemon, where it was mounted.
pub fn umount(mountpoint: &Path, lazy: bool, enter: Option<u32>) -> Result<()> {
    let target =
        std::path::absolute(mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    if let Some(pid) = enter {
        crate::sys::mount::enter_user_and_mount_namespaces(pid)
            .with_context(|| format!("entering the namespaces of the engine's process {pid}"))?;
    }
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
    fn mountinfo_lines_are_read_with_escapes() {
        let text = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.asme /src/x rw,user_id=0\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        let all = parse_mountinfo(text);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].target, PathBuf::from("/mnt/a b"));
        assert_eq!(all[0].fstype, FSTYPE);
        assert_eq!(all[0].source, "/src/x");
        assert_eq!(all[0].super_options, "rw,user_id=0");
    }
}

//! `asme agent serve`: the long-lived, privileged half of the idmap strategy and of `asme fix`
//! for ordinary users.
//!
//! It runs in a container that asme starts from its own binary with exactly the privileges
//! those two jobs need (see `agent::start`), joins the engine's mount namespace, and answers
//! requests on a root:docker socket, each checked against the peer's credentials:
//! - `prepare`: a lease of idmapped copies of the peer's folders, attached under a root-only
//!   folder and detached as soon as the peer's connection closes (the `docker run` that uses
//!   them has ended, or crashed). Leases a killed agent left behind are detached when the next
//!   one starts.
//! - `fix`: `asme fix`'s walker, as root, over a tree of the peer's.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

use super::protocol::{BUILD, ErrorKind, Header, MAX_SOURCES, PROTOCOL, Request, Response, RunDir};
use crate::chown;
use crate::idmap::{self, IdMap};
use crate::owner::{self, Owner};
use crate::sys::fs as sysfs;
use crate::sys::{mount, socket};

/// Largest request message: a small JSON object.
const MAX_REQUEST: usize = 4096;

/// Serves until SIGTERM/SIGINT/SIGHUP. `daemon` names the engine's daemon process, in whose
/// mount namespace the leases must live; `run_dir` is this engine's agent folder.
pub fn serve(daemon: &str, run_dir: &Path) -> Result<()> {
    let dir = RunDir(run_dir.to_path_buf());
    let (socket, lock) = (dir.socket(), dir.lock());
    let leases = LEASES.get_or_init(|| dir.leases()).clone();
    // setns(2) into a mount namespace refuses multi-threaded callers: do it first. The leases
    // must live where the engine resolves bind sources: the daemon's mount namespace (host
    // PID 1 may also refuse to be opened, as on some VMs).
    let host = crate::engine::kind::daemon_pid(daemon).unwrap_or(1);
    mount::enter_mount_namespace(host).with_context(|| {
        format!(
            "joining the mount namespace of pid {host} (the agent needs --pid=host, SYS_ADMIN, \
             SYS_PTRACE, SYS_CHROOT)"
        )
    })?;
    // TERM/INT end the agent through the cleanup thread below, not mid-request.
    let stop = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]);
    stop.thread_block().context("blocking signals")?;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir.0)?;
    // One agent at a time: a new one waits here until an old one (being replaced, or still
    // on its way out) has released its leases and exited, so that no agent ever detaches a
    // lease that another agent's live client holds.
    let _only_agent =
        mount::lock_exclusive(&lock).with_context(|| format!("locking {}", lock.display()))?;
    remove_stale_leases()?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&leases)
        .context("creating the leases folder")?;
    // An older folder may have another mode; no host user may reach into a lease.
    fs::set_permissions(&leases, fs::Permissions::from_mode(0o700))?;
    let listener = listen(&socket)?;
    let removing = socket.clone();
    std::thread::spawn(move || {
        let _ = stop.wait();
        // Prepared mounts must not outlive the agent; containers keep their own binds.
        let _ = fs::remove_file(&removing);
        let _ = remove_stale_leases();
        std::process::exit(0);
    });
    eprintln!("asme agent: listening on {}", socket.display());
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                std::thread::spawn(move || serve_connection(conn));
            }
            Err(e) => eprintln!("asme agent: accept: {e}"),
        }
    }
    Ok(())
}

/// Binds the socket under a temporary name, sets owner and mode, then renames it into place,
/// so nobody outside the docker group ever finds it open.
fn listen(path: &Path) -> Result<UnixListener> {
    let tmp = path.with_extension("sock.new");
    let _ = fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    let docker_gid = owner::host_group().by_name("docker").map(|g| g.gid);
    std::os::unix::fs::chown(&tmp, Some(0), docker_gid)?;
    let mode = if docker_gid.is_some() { 0o660 } else { 0o600 };
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)?;
    Ok(listener)
}

/// This agent's leases folder (`RunDir::leases`), set once by `serve`: the agent serves one
/// engine.
static LEASES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn leases() -> PathBuf {
    LEASES
        .get()
        .cloned()
        .unwrap_or_else(|| RunDir(PathBuf::from(super::protocol::DEFAULT_RUN_DIR)).leases())
}

/// Detaches and removes every lease under [`leases`]: those of an agent that was killed, and
/// folders that `docker start` of an old container made where a lease had been (asme used
/// `-v` for leases before it used `--mount`, which refuses a missing source).
fn remove_stale_leases() -> io::Result<()> {
    let entries = match fs::read_dir(leases()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for lease in entries {
        let lease = lease?.path();
        release(&lease);
        // What is left is no mount: a folder (and whatever a container wrote into it) or a
        // file that the engine made. Never remove through a mount that is still attached.
        for entry in fs::read_dir(&lease).into_iter().flatten().flatten() {
            let path = entry.path();
            if mount::is_mount_root(&path).is_ok_and(|mounted| !mounted) {
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
        let _ = fs::remove_dir(&lease);
    }
    Ok(())
}

fn serve_connection(conn: UnixStream) {
    let (response, lease) = match handle(&conn) {
        Ok((response, lease)) => (response, lease),
        Err(Refusal(kind, message, source)) => (
            Response::Error {
                kind,
                message,
                source,
            },
            None,
        ),
    };
    let text = serde_json::to_vec(&response).expect("responses serialise");
    if socket::send_with_fds(&conn, &text, &[]).is_err() {
        if let Some(lease) = &lease {
            release(lease);
        }
        return;
    }
    let Some(lease) = lease else { return };
    // The lease lives as long as the connection: wait for the peer to close it.
    loop {
        match socket::recv_with_fds(&conn, 64) {
            Ok((data, _)) if data.is_empty() => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    release(&lease);
}

/// Why a request was refused, and which folder it was about, if one.
struct Refusal(ErrorKind, String, Option<usize>);

impl From<(ErrorKind, String)> for Refusal {
    fn from((kind, message): (ErrorKind, String)) -> Refusal {
        Refusal(kind, message, None)
    }
}

fn handle(conn: &UnixStream) -> Result<(Response, Option<PathBuf>), Refusal> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Refusal(ErrorKind::Failed, format!("{what}: {e}"), None)
    };
    let peer = socket::peer(conn).map_err(|e| failed("reading peer credentials", &e))?;
    let (data, sources) =
        socket::recv_with_fds(conn, MAX_REQUEST).map_err(|e| failed("reading the request", &e))?;
    // The version comes first: a client of another build may send messages this agent cannot
    // even parse, and must hear "replace me", not "malformed".
    let malformed =
        |e: serde_json::Error| Refusal(ErrorKind::Invalid, format!("malformed request: {e}"), None);
    let value: serde_json::Value = serde_json::from_slice(&data).map_err(malformed)?;
    let header = serde_json::from_value::<Header>(value.clone()).unwrap_or(Header {
        protocol: 0,
        build: String::new(),
    });
    let request: Request = match serde_json::from_value(value) {
        Ok(Request::Ping) => return Ok((Response::Pong { protocol: PROTOCOL }, None)),
        // Serves only clients of this very build: any other one replaces the agent.
        _ if !header.is_ours() => {
            let message = format!(
                "client protocol {} build {}, agent protocol {PROTOCOL} build {BUILD}",
                header.protocol, header.build
            );
            return Err(Refusal(ErrorKind::Protocol, message, None));
        }
        parsed => parsed.map_err(malformed)?,
    };
    match request {
        Request::Ping => Ok((Response::Pong { protocol: PROTOCOL }, None)),
        Request::Fix {
            name,
            path,
            owner_uid,
            owner_gid,
            from_uid,
            from_gid,
            all,
            follow_hardlinks,
            cross_mounts,
        } => {
            check_owner(peer, owner_uid, owner_gid)?;
            let [parent] = sources.as_slice() else {
                return Err(Refusal(
                    ErrorKind::Invalid,
                    "expected the tree's parent folder".into(),
                    None,
                ));
            };
            let policy = chown::Policy {
                owner: Owner {
                    uid: owner_uid,
                    gid: owner_gid,
                },
                scope: if all {
                    chown::Scope::All
                } else {
                    chown::Scope::OwnedBy {
                        uid: from_uid,
                        gid: from_gid,
                    }
                },
                hard_links: if follow_hardlinks {
                    chown::HardLinks::Follow
                } else {
                    chown::HardLinks::Skip
                },
                cross_mounts,
                dry_run: false,
            };
            fix_tree(peer, parent, &name, &path, &policy).map(|response| (response, None))
        }
        Request::Prepare {
            container_uid,
            container_gid,
            owner_uid,
            owner_gid,
        } => {
            check_owner(peer, owner_uid, owner_gid)?;
            if sources.is_empty() || sources.len() > MAX_SOURCES {
                let message = format!("expected 1 to {MAX_SOURCES} folders, got {}", sources.len());
                return Err(Refusal(ErrorKind::Invalid, message, None));
            }
            let denied = |e: idmap::IdMapError| Refusal(ErrorKind::Denied, e.to_string(), None);
            let uids = IdMap::for_owner(container_uid, owner_uid).map_err(denied)?;
            let gids = IdMap::for_owner(container_gid, owner_gid).map_err(denied)?;
            let lease = new_lease_dir().map_err(|e| failed("creating a lease", &e))?;
            match attach_all(&lease, &sources, &uids, &gids) {
                Ok(paths) => Ok((Response::Prepared { paths }, Some(lease))),
                Err(refusal) => {
                    release(&lease);
                    Err(refusal)
                }
            }
        }
    }
}

/// Walks the peer's tree `name` in `parent` as root. The tree is opened without following a
/// link, and must be the peer's: the folder itself or the folder holding it belongs to them.
fn fix_tree(
    peer: socket::Peer,
    parent: &OwnedFd,
    name: &[u8],
    path: &str,
    policy: &chown::Policy,
) -> Result<Response, Refusal> {
    let invalid = || {
        Refusal(
            ErrorKind::Invalid,
            format!("{path}: not a folder name"),
            None,
        )
    };
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(invalid());
    }
    let cname = std::ffi::CString::new(name).map_err(|_| invalid())?;
    let top = sysfs::open_dir(parent.as_fd(), &cname, true)
        .map_err(|e| Refusal(ErrorKind::Failed, format!("opening {path}: {e}"), None))?;
    if peer.uid != 0 {
        let owned = |fd: &OwnedFd| sysfs::stat(fd.as_fd()).is_ok_and(|i| i.uid == peer.uid);
        if !owned(&top) && !owned(parent) {
            let message = format!(
                "{path} is not yours: neither it nor the folder holding it belongs to uid {}",
                peer.uid
            );
            return Err(Refusal(ErrorKind::Denied, message, None));
        }
    }
    // (lines, their bytes, lines left out): enough to say what is wrong, never an unbounded
    // answer.
    let problems = std::sync::Mutex::new((Vec::new(), 0usize, 0u64));
    let report = |line: &str| {
        let mut problems = problems.lock().unwrap_or_else(|e| e.into_inner());
        if problems.1 + line.len() <= MAX_PROBLEM_BYTES {
            problems.1 += line.len();
            problems.0.push(line.to_string());
        } else {
            problems.2 += 1;
        }
    };
    let walked = chown::walk_tree(top, Path::new(path), policy, &report, false)
        .map_err(|e| Refusal(ErrorKind::Failed, format!("{e:#}"), None))?;
    let (mut lines, _, left_out) = problems.into_inner().unwrap_or_else(|e| e.into_inner());
    if left_out > 0 {
        lines.push(format!("... and {left_out} more problems like these"));
    }
    Ok(Response::Fixed {
        walked,
        problems: lines,
    })
}

/// How much problem text one `fix` answer carries.
const MAX_PROBLEM_BYTES: usize = 256 * 1024;

/// A peer gets mappings to its own ids only; root may ask for anyone.
fn check_owner(peer: socket::Peer, owner_uid: u32, owner_gid: u32) -> Result<(), Refusal> {
    if peer.uid == 0 {
        return Ok(());
    }
    if owner_uid != peer.uid {
        let message = format!(
            "uid {} may not ask for files owned by uid {owner_uid}",
            peer.uid
        );
        return Err(Refusal(ErrorKind::Denied, message, None));
    }
    if owner_gid != peer.gid && !peer_groups(peer.pid).contains(&owner_gid) {
        let message = format!("uid {} is not in group {owner_gid}", peer.uid);
        return Err(Refusal(ErrorKind::Denied, message, None));
    }
    Ok(())
}

/// Supplementary groups of a process, from /proc/PID/status.
fn peer_groups(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn new_lease_dir() -> io::Result<PathBuf> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
    let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // The name is what docker shows when a container started by `asme run` is started again
    // without it (its lease gone, `--mount` refuses the missing source): it says what to do.
    let dir = leases().join(format!("{id}-start-again-with-asme-run"));
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn attach_all(
    lease: &Path,
    sources: &[OwnedFd],
    uids: &IdMap,
    gids: &IdMap,
) -> Result<Vec<String>, Refusal> {
    let userns = idmap::UserNamespace::new(uids, gids).map_err(|e| {
        Refusal(
            ErrorKind::Failed,
            format!("creating the id mapping: {e}"),
            None,
        )
    })?;
    let mut paths = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        let failed =
            |what: &str, e: io::Error| Refusal(ErrorKind::Failed, format!("{what}: {e}"), Some(i));
        // The peer could open it, the agent may not: a FUSE share mounted without
        // allow_other answers root's own requests with EACCES, and so it does the engine's.
        let unreachable = |e: io::Error| {
            let message = format!("the engine may not enter it, though you can: {e}");
            Refusal(ErrorKind::Unreachable, message, Some(i))
        };
        let is_dir = mount::is_dir(source.as_fd()).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) => unreachable(e),
            _ => failed("reading the folder", e),
        })?;
        let tree = userns
            .idmapped_tree(source.as_fd())
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Refusal(
                    ErrorKind::Unsupported,
                    format!("the kernel refuses an idmapped mount there: {e}"),
                    Some(i),
                ),
                Some(libc::EACCES) => unreachable(e),
                _ => failed("making the idmapped mount", e),
            })?;
        let target = lease.join(i.to_string());
        let created = if is_dir {
            fs::create_dir(&target)
        } else {
            fs::File::create(&target).map(drop)
        };
        created
            .and_then(|()| mount::attach(tree.as_fd(), &target))
            .map_err(|e| failed("attaching the idmapped mount", e))?;
        paths.push(target.to_string_lossy().into_owned());
    }
    Ok(paths)
}

/// Detaches every mount of a lease and removes it; a lease is only ever a flat folder of
/// mount points.
fn release(lease: &Path) {
    if let Ok(entries) = fs::read_dir(lease) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = mount::detach(&path);
            let _ = fs::remove_dir(&path).or_else(|_| fs::remove_file(&path));
        }
    }
    let _ = fs::remove_dir(lease);
}

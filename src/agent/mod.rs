//! The agent: a long-lived container, started on demand from asme's own binary, that makes
//! idmapped mounts and runs `asme fix` for ordinary users over a root:docker socket.
//!
//! This module is the client side (start, lease, stop); `server` is the agent; `protocol` is
//! what they say. Making idmapped mounts needs CAP_SYS_ADMIN in the host's namespaces, which
//! the target container must never get: asking a separate container keeps the target's
//! privileges exactly those of plain `docker run`, and costs about a millisecond once the
//! agent runs.

pub mod protocol;
pub mod server;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use crate::owner::Owner;
use crate::run::engine::{Docker, SELF_IMAGE_LABEL};
use crate::sys::socket;
use protocol::{BUILD, ErrorKind, PROTOCOL, Request, Response, SOCKET};

/// The agent container's name: one per engine.
pub const CONTAINER: &str = "asme-agent";
/// Label on everything agent-related, so `asme agent stop` finds it all.
const LABEL: &str = "asme.agent=1";
/// How long starting the agent and any one request may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// Idmapped copies of folders, valid while this lease (its connection) is open.
pub struct Lease {
    conn: UnixStream,
    /// Host paths to give docker instead of the folders, in request order.
    pub paths: Vec<PathBuf>,
}

impl Lease {
    /// Keeps the lease open across exec(2) into docker: it then ends exactly when the
    /// `docker run` that uses it ends, however that happens.
    pub fn keep_across_exec(&self) -> io::Result<()> {
        rustix::io::fcntl_setfd(self.conn.as_fd(), rustix::io::FdFlags::empty())?;
        Ok(())
    }
}

/// Why no lease was given.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The filesystem of folder `source` (or the kernel) refuses idmapped mounts.
    #[error("{message}")]
    Unsupported {
        message: String,
        source_index: Option<usize>,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Asks the agent (starting it if needed) for idmapped copies of `sources` where container
/// ids `container` are stored as `owner`.
pub fn lease(
    docker: &Docker,
    exe: &Path,
    sources: &[BorrowedFd<'_>],
    container: (u32, u32),
    owner: Owner,
) -> Result<Lease, LeaseError> {
    let request = Request::Prepare {
        protocol: PROTOCOL,
        build: BUILD.to_string(),
        container_uid: container.0,
        container_gid: container.1,
        owner_uid: owner.uid,
        owner_gid: owner.gid,
    };
    let (conn, response) =
        ask(docker, exe, &request, sources, Some(DEADLINE)).map_err(anyhow::Error::from)?;
    match response {
        Response::Prepared { paths } if paths.len() == sources.len() => Ok(Lease {
            conn,
            paths: paths.into_iter().map(PathBuf::from).collect(),
        }),
        Response::Error {
            kind: ErrorKind::Unsupported,
            message,
            source,
        } => Err(LeaseError::Unsupported {
            message,
            source_index: source,
        }),
        Response::Error { message, .. } => Err(anyhow!("the asme agent refused: {message}").into()),
        other => Err(anyhow!("unexpected answer from the asme agent: {other:?}").into()),
    }
}

/// Answer to an `asme fix` request.
pub struct Fixed {
    pub walked: crate::fix::Walked,
    pub problems: Vec<String>,
}

/// Has the agent walk the tree `name` in folder `parent` (opened by the caller) as root.
/// A walk takes as long as the tree needs: there is no deadline on the answer.
pub fn fix(
    docker: &Docker,
    exe: &Path,
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &Path,
    policy: &crate::fix::Policy,
) -> Result<Fixed, FixError> {
    let (from_uid, from_gid) = match policy.scope {
        crate::fix::Scope::OwnedBy { uid, gid } => (uid, gid),
        crate::fix::Scope::All => (0, 0),
    };
    let request = Request::Fix {
        protocol: PROTOCOL,
        build: BUILD.to_string(),
        name: name.to_vec(),
        path: path.to_string_lossy().into_owned(),
        owner_uid: policy.owner.uid,
        owner_gid: policy.owner.gid,
        from_uid,
        from_gid,
        all: policy.scope == crate::fix::Scope::All,
        follow_hardlinks: policy.hard_links == crate::fix::HardLinks::Follow,
        cross_mounts: policy.cross_mounts,
    };
    let answer = ask(docker, exe, &request, &[parent], None).map_err(|e| match e {
        AskError::Unreachable(e) => FixError::Unavailable(e),
        AskError::Answer(e) => FixError::Refused(format!("{e:#}")),
    })?;
    match answer.1 {
        Response::Fixed { walked, problems } => Ok(Fixed { walked, problems }),
        Response::Error { message, .. } => Err(FixError::Refused(message)),
        other => Err(FixError::Refused(format!(
            "unexpected answer from the asme agent: {other:?}"
        ))),
    }
}

/// Why the agent did not fix a tree.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    /// It said no (not the caller's tree, cannot open it), or answered something unreadable
    /// after it may have acted: final, no other way is tried.
    #[error("{0}")]
    Refused(String),
    /// It could not be asked (not running and not startable here): try another way.
    #[error(transparent)]
    Unavailable(anyhow::Error),
}

/// Sends one request (starting the agent if needed, and replacing once an agent that speaks
/// another protocol) and returns the connection with the answer.
fn ask(
    docker: &Docker,
    exe: &Path,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    deadline: Option<Duration>,
) -> Result<(UnixStream, Response), AskError> {
    let mut restarted = false;
    loop {
        let conn = connect_or_start(docker, exe).map_err(AskError::Unreachable)?;
        // Once the request is sent the agent may have acted: no way back from here.
        let response = exchange(&conn, request, fds, deadline).map_err(|e| {
            AskError::Answer(anyhow!(
                "the asme agent's answer could not be read ({e}); if it is from another asme \
                 version, 'asme agent stop' replaces it"
            ))
        })?;
        match response {
            // An agent of another build (older ones call a request they cannot parse
            // malformed): replace it, once.
            Response::Error {
                kind, ref message, ..
            } if !restarted
                && (kind == ErrorKind::Protocol
                    || (kind == ErrorKind::Invalid
                        && message.starts_with("malformed request"))) =>
            {
                stop(docker).map_err(AskError::Unreachable)?;
                restarted = true;
            }
            response => return Ok((conn, response)),
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug)]
enum AskError {
    /// The agent could not be reached or started: nothing was asked.
    Unreachable(anyhow::Error),
    /// The request went out, the answer did not make sense: the agent may have acted.
    Answer(anyhow::Error),
}

impl From<AskError> for anyhow::Error {
    fn from(e: AskError) -> anyhow::Error {
        match e {
            AskError::Unreachable(e) | AskError::Answer(e) => e,
        }
    }
}

fn exchange(
    conn: &UnixStream,
    request: &Request,
    fds: &[BorrowedFd<'_>],
    deadline: Option<Duration>,
) -> io::Result<Response> {
    conn.set_read_timeout(deadline)?;
    socket::send_with_fds(conn, &serde_json::to_vec(request)?, fds)?;
    // A long answer (a fix's problem lines) may come in several pieces on a stream socket.
    let mut data = Vec::new();
    loop {
        let (piece, _) = socket::recv_with_fds(conn, 64 * 1024)?;
        if piece.is_empty() {
            let closed = "the agent closed the connection";
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, closed));
        }
        data.extend_from_slice(&piece);
        match serde_json::from_slice(&data) {
            Ok(response) => return Ok(response),
            Err(e) if e.is_eof() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn connect_or_start(docker: &Docker, exe: &Path) -> Result<UnixStream> {
    match UnixStream::connect(SOCKET) {
        Ok(conn) => return Ok(conn),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            bail!("cannot use the asme agent at {SOCKET}: {e} (is your user in the docker group?)")
        }
        Err(_) => {}
    }
    start(docker, exe)?;
    let deadline = Instant::now() + DEADLINE;
    for attempt in 0.. {
        match UnixStream::connect(SOCKET) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "the asme agent did not come up within {DEADLINE:?} ({e}){}",
                    agent_log(docker)
                );
            }
            Err(_) => {}
        }
        // Every 200 ms, make sure it has not died on the way up.
        if attempt % 10 == 9 && !is_running(docker) {
            bail!("the asme agent stopped while starting{}", agent_log(docker));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

fn is_running(docker: &Docker) -> bool {
    docker
        .output([
            "container",
            "inspect",
            "--format",
            "{{.State.Running}}",
            CONTAINER,
        ])
        .is_ok_and(|out| out.trim() == "true")
}

/// The agent's last words, for an error message.
fn agent_log(docker: &Docker) -> String {
    match docker.output(["logs", "--tail", "2", CONTAINER]) {
        Ok(log) if !log.trim().is_empty() => format!(": {}", log.trim().replace('\n', "; ")),
        _ => String::new(),
    }
}

/// Starts the agent container. Its privileges are what the kernel sequence needs and no
/// more: joining the host's mount namespace (SYS_ADMIN, SYS_CHROOT, and SYS_PTRACE to open
/// the engine's /proc/PID/ns/mnt), writing id maps (SETUID, SETGID, and SETFCAP, which
/// Linux 5.12+ demands to map a container's root: `verify_root_map`), giving its socket to
/// the docker group and ownership back in `asme fix` (CHOWN), and entering unreadable folders
/// in a fix (DAC_READ_SEARCH). No network, a read-only root, no restart policy. A stopped agent is kept
/// until the next start (its log explains why it stopped) or `asme agent stop`.
pub fn start(docker: &Docker, exe: &Path) -> Result<()> {
    let image = docker.self_image(exe)?;
    if docker.output(["container", "inspect", CONTAINER]).is_ok() && !is_running(docker) {
        docker.output(["rm", "-f", CONTAINER])?;
    }
    let result = docker.output([
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--label",
        LABEL,
        "--pid=host",
        "--network=none",
        "--read-only",
        "--cap-drop=ALL",
        "--cap-add=SYS_ADMIN",
        "--cap-add=SYS_CHROOT",
        "--cap-add=SYS_PTRACE",
        "--cap-add=SETUID",
        "--cap-add=SETGID",
        "--cap-add=SETFCAP",
        "--cap-add=CHOWN",
        "--cap-add=DAC_READ_SEARCH",
        // AppArmor's and SELinux's container policies forbid mount operations outright.
        "--security-opt=apparmor=unconfined",
        "--security-opt=label=disable",
        &image,
        "/asme",
        "agent",
        "serve",
    ]);
    match result {
        Ok(_) => Ok(()),
        // Another asme started it at the same moment.
        Err(e) if e.to_string().contains("is already in use") => Ok(()),
        Err(e) => Err(e.context("starting the asme agent container")),
    }
}

/// `asme agent stop`: stops the agent (it detaches every lease on its way out) and removes
/// its container and asme's images.
pub fn stop(docker: &Docker) -> Result<()> {
    for step in [
        &["stop", "--time", "10", CONTAINER][..],
        &["rm", "-f", CONTAINER],
    ] {
        match docker.output(step) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("No such container") => {}
            Err(e) => return Err(e.context("stopping the asme agent")),
        }
    }
    let images = docker.output([
        "images",
        "-q",
        "--filter",
        &format!("label={SELF_IMAGE_LABEL}"),
    ])?;
    for id in images.split_whitespace() {
        let _ = docker.output(["image", "rm", "-f", id]);
    }
    Ok(())
}

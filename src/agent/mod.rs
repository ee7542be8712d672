//! The agent: a long-lived container, started on demand from asme's own binary, that makes
//! idmapped mounts and runs `asme fix` for ordinary users over a root:docker socket.
//!
//! This module is the client side (start, lease, stop); `server` is the agent; `protocol` is
//! what they say. Making idmapped mounts needs CAP_SYS_ADMIN in the host's namespaces, which
//! the target container must never get: asking a separate container keeps the target's
//! privileges exactly those of plain `docker run`, and costs about a millisecond once the
//! agent runs.

pub mod lifecycle;
pub mod protocol;
pub mod server;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::chown::{HardLinks, Policy, Scope, Walked};
use crate::engine::Engine;
use crate::owner::Owner;
use crate::sys::socket;
use lifecycle::{DEADLINE, connect_or_start};
use protocol::{ErrorKind, Header, Request, Response};

pub use lifecycle::stop;

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
    /// Folder `index` (or every folder, when `None`) cannot be idmapped by the agent, though
    /// the caller can read it: a mapping served as the caller can still give it.
    #[error("{message}")]
    Source {
        why: SourceRefusal,
        message: String,
        index: Option<usize>,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Why the agent cannot idmap a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// Its filesystem (or the kernel) refuses idmapped mounts: true of every folder there.
    RefusesIdmap,
    /// The agent (root in the engine's namespaces) may not reach it: a FUSE share mounted
    /// without `allow_other`.
    Unreachable,
}

/// Asks the agent (starting it if needed) for idmapped copies of `sources` where container
/// ids `container` are stored as `owner`.
pub fn lease(
    docker: &Engine,
    exe: &Path,
    sources: &[BorrowedFd<'_>],
    container: (u32, u32),
    owner: Owner,
) -> Result<Lease, LeaseError> {
    let request = Request::Prepare {
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
            kind: kind @ (ErrorKind::Unsupported | ErrorKind::Unreachable),
            message,
            source,
        } => Err(LeaseError::Source {
            why: if kind == ErrorKind::Unsupported {
                SourceRefusal::RefusesIdmap
            } else {
                SourceRefusal::Unreachable
            },
            message,
            index: source,
        }),
        Response::Error { message, .. } => Err(anyhow!("the asme agent refused: {message}").into()),
        other => Err(anyhow!("unexpected answer from the asme agent: {other:?}").into()),
    }
}

/// Answer to an `asme fix` request.
pub struct Fixed {
    pub walked: Walked,
    pub problems: Vec<String>,
}

/// Has the agent walk the tree `name` in folder `parent` (opened by the caller) as root.
/// A walk takes as long as the tree needs: there is no deadline on the answer.
pub fn fix(
    docker: &Engine,
    exe: &Path,
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &Path,
    policy: &Policy,
) -> Result<Fixed, FixError> {
    let (from_uid, from_gid) = match policy.scope {
        Scope::OwnedBy { uid, gid } => (uid, gid),
        Scope::All => (0, 0),
    };
    let request = Request::Fix {
        name: name.to_vec(),
        path: path.to_string_lossy().into_owned(),
        owner_uid: policy.owner.uid,
        owner_gid: policy.owner.gid,
        from_uid,
        from_gid,
        all: policy.scope == Scope::All,
        follow_hardlinks: policy.hard_links == HardLinks::Follow,
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
    docker: &Engine,
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
                lifecycle::replace_other_build(docker, exe).map_err(AskError::Unreachable)?;
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
    let message = Header::ours().with(request);
    socket::send_with_fds(conn, &serde_json::to_vec(&message)?, fds)?;
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

//! What asme and its agent say to each other: one JSON message each way, folders attached
//! as descriptors. The connection stays open for as long as the lease is needed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes meaning; an agent speaking another version is replaced.
pub const PROTOCOL: u32 = 5;

/// This build's id (see build.rs): an agent of another build is replaced too, so that an
/// upgrade never leaves an old agent serving new clients.
pub const BUILD: &str = env!("ASME_BUILD");

/// The agent's folder on the host: its socket, lock and leases. One per engine, so that the
/// agents of two engines on one host (a rootful Docker and Podman's socket, a test's own
/// dockerd) never answer each other's clients: the default engine's is `/run/asme`, any
/// other's `/run/asme/engines/ID` ([`RunDir::for_endpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(pub PathBuf);

/// The default engine's agent folder.
pub const DEFAULT_RUN_DIR: &str = "/run/asme";

impl RunDir {
    /// The agent folder of the engine at `endpoint` (its socket, or what names it): the
    /// default Docker socket, or none, is the default engine.
    pub fn for_endpoint(endpoint: Option<&str>) -> RunDir {
        let endpoint = endpoint.map(|e| e.strip_prefix("unix://").unwrap_or(e));
        match endpoint {
            None | Some("" | "/var/run/docker.sock" | "/run/docker.sock") => {
                RunDir(PathBuf::from(DEFAULT_RUN_DIR))
            }
            Some(other) => {
                // FNV-1a: a short, stable name for the endpoint.
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for byte in other.bytes() {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
                }
                RunDir(Path::new(DEFAULT_RUN_DIR).join(format!("engines/{hash:016x}")))
            }
        }
    }

    /// The agent container's name: `asme-agent` for the default engine, `asme-agent-ID` for
    /// another (two engines may share one store: Podman's CLI and its service do).
    pub fn container_name(&self) -> String {
        match self
            .0
            .strip_prefix(Path::new(DEFAULT_RUN_DIR).join("engines"))
        {
            Ok(id) => format!("asme-agent-{}", id.display()),
            Err(_) => "asme-agent".to_string(),
        }
    }

    /// Where the agent listens: root:docker, mode 0660.
    pub fn socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }

    /// Where the agent attaches prepared mounts: root only (0700), so no host user can write
    /// through an idmapped view of someone's folder.
    pub fn leases(&self) -> PathBuf {
        self.0.join("leases")
    }

    /// Held by the serving agent.
    pub fn lock(&self) -> PathBuf {
        self.0.join("agent.lock")
    }
}

/// The most folders one request may carry.
pub const MAX_SOURCES: usize = 64;

/// What every request starts with: who is asking, so that an agent of another build can say
/// "replace me" before it tries to read the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub protocol: u32,
    #[serde(default)]
    pub build: String,
}

impl Header {
    /// This build's header.
    pub fn ours() -> Header {
        Header {
            protocol: PROTOCOL,
            build: BUILD.to_string(),
        }
    }

    /// Whether the peer is this very build.
    pub fn is_ours(&self) -> bool {
        self.protocol == PROTOCOL && self.build == BUILD
    }

    /// A whole message: this header and `request`.
    pub fn with(self, request: &Request) -> Message<'_> {
        Message {
            header: self,
            request,
        }
    }
}

/// A request on the wire: the header's fields, then the request's, in one JSON object.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    #[serde(flatten)]
    pub header: Header,
    #[serde(flatten)]
    pub request: &'a Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Are you there, and do you speak my protocol?
    Ping,
    /// Make idmapped copies of the attached folders (in order) where container ids
    /// `container_uid`/`container_gid` are stored as the owner, and lease them to this
    /// connection.
    Prepare {
        container_uid: u32,
        container_gid: u32,
        owner_uid: u32,
        owner_gid: u32,
    },
    /// `asme fix` the folder `name` in the attached folder (its parent, opened by the peer):
    /// entries of `from` (or everyone's, with `all`) become the owner's.
    Fix {
        /// The tree's name in its parent, as bytes: any name a filesystem allows.
        name: Vec<u8>,
        /// The tree's path as the peer knows it, for messages.
        path: String,
        owner_uid: u32,
        owner_gid: u32,
        from_uid: u32,
        from_gid: u32,
        all: bool,
        follow_hardlinks: bool,
        cross_mounts: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Pong {
        protocol: u32,
    },
    /// Host paths of the prepared mounts, one per attached folder, in order. They stay until
    /// the connection closes.
    Prepared {
        paths: Vec<String>,
    },
    /// A finished `asme fix`: its summary line, its problem lines, and whether it went
    /// without error.
    Fixed {
        walked: crate::chown::Walked,
        problems: Vec<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
        /// Which attached folder it is about, when it is about one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The folder's filesystem (or the kernel) refuses idmapped mounts: use another strategy.
    Unsupported,
    /// The agent may not reach the folder that the peer can (a FUSE share mounted without
    /// `allow_other`): neither can the engine, so use a strategy that serves it as the peer.
    Unreachable,
    /// The request asks for something this peer may not have.
    Denied,
    /// The request is malformed.
    Invalid,
    /// The agent speaks another protocol version: replace it.
    Protocol,
    /// Anything else went wrong on the agent's side.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_has_its_own_agent_folder() {
        let default = RunDir(PathBuf::from("/run/asme"));
        for endpoint in [
            None,
            Some("unix:///var/run/docker.sock"),
            Some("/run/docker.sock"),
        ] {
            assert_eq!(RunDir::for_endpoint(endpoint), default, "{endpoint:?}");
        }
        assert_eq!(default.container_name(), "asme-agent");
        let own = RunDir::for_endpoint(Some("unix:///tmp/asme-e2e/d1/docker.sock"));
        let podman = RunDir::for_endpoint(Some("unix:///run/podman/podman.sock"));
        let name = own.container_name();
        assert!(
            name.starts_with("asme-agent-") && name.len() == 27,
            "{name}"
        );
        assert_ne!(name, podman.container_name());
        assert!(own.0.starts_with("/run/asme/engines/"), "{own:?}");
        assert_ne!(own, podman);
        assert_eq!(
            own,
            RunDir::for_endpoint(Some("/tmp/asme-e2e/d1/docker.sock"))
        );
        assert_eq!(default.socket(), PathBuf::from("/run/asme/agent.sock"));
        assert_eq!(default.leases(), PathBuf::from("/run/asme/leases"));
    }

    #[test]
    fn wire_format_is_stable() {
        let request = Request::Prepare {
            container_uid: 0,
            container_gid: 0,
            owner_uid: 1234,
            owner_gid: 1234,
        };
        let header = Header {
            protocol: 1,
            build: "b".into(),
        };
        let text = serde_json::to_string(&header.clone().with(&request)).unwrap();
        assert_eq!(
            text,
            r#"{"protocol":1,"build":"b","op":"prepare","container_uid":0,"container_gid":0,"owner_uid":1234,"owner_gid":1234}"#
        );
        // The agent reads the header first, then the request from the same object.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::from_value::<Header>(value.clone()).unwrap(),
            header
        );
        assert_eq!(serde_json::from_value::<Request>(value).unwrap(), request);
        let response = Response::Error {
            kind: ErrorKind::Unsupported,
            message: "x".into(),
            source: None,
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"error":{"kind":"unsupported","message":"x"}}"#
        );
    }
}

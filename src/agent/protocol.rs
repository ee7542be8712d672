//! What asme and its agent say to each other: one JSON message each way, folders attached
//! as descriptors. The connection stays open for as long as the lease is needed.

use serde::{Deserialize, Serialize};

/// Bumped whenever a message changes meaning; an agent speaking another version is replaced.
pub const PROTOCOL: u32 = 4;

/// This build's id (see build.rs): an agent of another build is replaced too, so that an
/// upgrade never leaves an old agent serving new clients.
pub const BUILD: &str = env!("ASME_BUILD");

/// Where the agent listens on the host: root:docker, mode 0660.
pub const SOCKET: &str = "/run/asme/agent.sock";

/// Where the agent attaches prepared mounts: root only (0700), so no host user can write
/// through an idmapped view of someone's folder.
pub const LEASES: &str = "/run/asme/leases";

/// The most folders one request may carry.
pub const MAX_SOURCES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Are you there, and do you speak my protocol?
    Ping {
        protocol: u32,
        #[serde(default)]
        build: String,
    },
    /// Make idmapped copies of the attached folders (in order) where container ids
    /// `container_uid`/`container_gid` are stored as the owner, and lease them to this
    /// connection.
    Prepare {
        protocol: u32,
        #[serde(default)]
        build: String,
        container_uid: u32,
        container_gid: u32,
        owner_uid: u32,
        owner_gid: u32,
    },
    /// `asme fix` the folder `name` in the attached folder (its parent, opened by the peer):
    /// entries of `from` (or everyone's, with `all`) become the owner's.
    Fix {
        protocol: u32,
        #[serde(default)]
        build: String,
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
        walked: crate::fix::Walked,
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
    fn wire_format_is_stable() {
        let request = Request::Prepare {
            protocol: 1,
            build: "b".into(),
            container_uid: 0,
            container_gid: 0,
            owner_uid: 1234,
            owner_gid: 1234,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"op":"prepare","protocol":1,"build":"b","container_uid":0,"container_gid":0,"owner_uid":1234,"owner_gid":1234}"#
        );
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

//! A rootless engine's own namespaces: the user namespace its user owns (the user is root in
//! it, subordinate ids are the other ids) and the mount namespace it resolves bind sources
//! in. Rootless Docker's daemon holds them; rootless Podman has no daemon, and its pause
//! process (`podman unshare` joins it) holds them. A mount that asme makes there, as that
//! user, is one the engine can see and that names ids the way its containers see them.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::kind::{process_name, processes_named};
use super::{Engine, Program};
use crate::owner::Owner;

/// The process that holds a rootless engine's namespaces, and whom the owner is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootlessNamespaces {
    pub pid: u32,
    /// The owner's uid and gid as the engine's containers see them (0:0 for the daemon's
    /// own user).
    pub owner_inside: (u32, u32),
}

impl RootlessNamespaces {
    /// The namespaces of `engine`, run by this process's user: for Docker, those of the
    /// rootless dockerd listening on the engine's socket (or the only one of this user's
    /// where the socket is not known); for Podman, its pause process's. `owner` must have an
    /// id in them: a rootless engine stores files only as its own ids.
    pub fn of(engine: &Engine, owner: Owner) -> Result<RootlessNamespaces> {
        let pid = match (engine.program, engine.api_socket()) {
            (Program::Podman, _) => podman_pause_process(engine)?,
            (Program::Docker, Some(socket)) => listening_daemon(socket).ok_or_else(|| {
                anyhow!(
                    "no rootless dockerd of yours listens on {}",
                    socket.display()
                )
            })?,
            (Program::Docker, None) => only_daemon()?,
        };
        let read = |what: &str| {
            let path = format!("/proc/{pid}/{what}");
            std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
        };
        let (uid_map, gid_map) = (read("uid_map")?, read("gid_map")?);
        let inside = |id: u32, map: &str| id_inside(id, map);
        match (inside(owner.uid, &uid_map), inside(owner.gid, &gid_map)) {
            (Some(uid), Some(gid)) => Ok(RootlessNamespaces {
                pid,
                owner_inside: (uid, gid),
            }),
            _ => bail!("the rootless engine's user namespace has no id for {owner}"),
        }
    }
}

/// Rootless Podman's pause process, started (`podman unshare true`) if none runs: Podman
/// starts it on first use and keeps it, and `podman system migrate` ends it.
fn podman_pause_process(engine: &Engine) -> Result<u32> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || format!("/run/user/{}", crate::sys::real_ids().0).into(),
            std::path::PathBuf::from,
        );
    let pidfile = runtime.join("libpod/tmp/pause.pid");
    let running = || {
        let pid = std::fs::read_to_string(&pidfile)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()?;
        let paused = process_name(pid).is_some_and(|name| name == "podman pause");
        (paused && is_ours(pid)).then_some(pid)
    };
    if let Some(pid) = running() {
        return Ok(pid);
    }
    engine.output(["unshare", "true"])?;
    running().ok_or_else(|| anyhow!("rootless Podman's pause process is not running"))
}

/// Whether process `pid` runs as this process's user.
fn is_ours(pid: u32) -> bool {
    let uid = crate::sys::real_ids().0;
    std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == uid)
}

/// This user's dockerd processes.
fn own_daemons() -> impl Iterator<Item = u32> {
    processes_named("dockerd").filter(|pid| is_ours(*pid))
}

/// The dockerd of ours that listens on `socket` (its network namespace's unix sockets: a
/// rootless daemon has a network namespace of its own).
fn listening_daemon(socket: &Path) -> Option<u32> {
    let wanted = socket.to_str()?;
    own_daemons().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
            .is_ok_and(|text| unix_listeners(&text).any(|path| path == wanted))
    })
}

fn only_daemon() -> Result<u32> {
    let all: Vec<u32> = own_daemons().collect();
    match all.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no rootless dockerd of yours runs on this machine"),
        _ => bail!(
            "{} rootless dockerds of yours run here: name the engine with \
             DOCKER_HOST=unix://SOCKET",
            all.len()
        ),
    }
}

/// The paths of listening sockets in `/proc/net/unix`'s text.
fn unix_listeners(text: &str) -> impl Iterator<Item = &str> {
    // Num RefCount Protocol Flags Type St Inode Path; Flags has __SO_ACCEPTCON (0x10000)
    // for a listening socket.
    const ACCEPTING: u32 = 0x0001_0000;
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
        let path = *fields.get(7)?;
        (flags & ACCEPTING != 0).then_some(path)
    })
}

/// The id that host id `id` has inside a user namespace with this `uid_map` or `gid_map`
/// (lines "inside outside count").
pub fn id_inside(id: u32, map: &str) -> Option<u32> {
    map.lines().find_map(|line| {
        let mut numbers = line.split_whitespace().map(|n| n.parse::<u64>().ok());
        let (inside, outside, count) = (numbers.next()??, numbers.next()??, numbers.next()??);
        let id = u64::from(id);
        (outside <= id && id < outside + count)
            .then(|| u32::try_from(inside + (id - outside)).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_read_through_the_namespace_map() {
        let map = "         0       1234          1\n         1     100000      65536\n";
        assert_eq!(id_inside(1234, map), Some(0));
        assert_eq!(id_inside(100000, map), Some(1));
        assert_eq!(id_inside(100999, map), Some(1000));
        assert_eq!(id_inside(165535, map), Some(65536));
        for outside in [0, 1000, 1233, 1235, 99999, 165536] {
            assert_eq!(id_inside(outside, map), None, "{outside}");
        }
        assert_eq!(id_inside(5, "0 0 4294967295\n"), Some(5));
        assert_eq!(id_inside(5, "garbage\n"), None);
    }

    #[test]
    fn listening_sockets_are_told_from_connections() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            00000000ab7cd0e0: 00000003 00000000 00000000 0001 03 4165847 /run/user/1234/x/containerd.sock\n\
            00000000d276b0af: 00000002 00000000 00010000 0001 01 4165836 /run/user/1234/docker.sock\n\
            00000000d276b0b0: 00000002 00000000 00010000 0001 01 4165837\n";
        let listening: Vec<&str> = unix_listeners(text).collect();
        assert_eq!(listening, ["/run/user/1234/docker.sock"]);
    }
}

//! Which engine asme drives (`--engine`), and what kind of engine answers (rootful,
//! rootless, Podman, Docker Desktop), read from its `version` and `info`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// The engine CLI asme drives; one entry per supported engine, so another engine is one new
/// variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Program {
    #[default]
    Docker,
    /// Podman's CLI, which takes docker's `run` arguments.
    Podman,
}

impl Program {
    /// The command that drives this engine.
    pub fn command(self) -> &'static str {
        match self {
            Program::Docker => "docker",
            Program::Podman => "podman",
        }
    }

    /// The name (`comm`) of a process in the mount namespace that resolves bind sources: the
    /// daemon, or for daemonless Podman its per-container monitor (one watches the agent).
    pub fn daemon(self) -> &'static str {
        match self {
            Program::Docker => "dockerd",
            Program::Podman => "conmon",
        }
    }

    /// The engine the environment names when `--engine` does not: Podman where
    /// `CONTAINER_HOST` is set and `DOCKER_HOST` is not (Podman's remote client reads it), or
    /// where `podman` is on PATH and `docker` is not; docker otherwise.
    pub fn from_environment() -> Program {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let on_path = |command: &str| {
            std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
            })
        };
        Program::choose(
            set("DOCKER_HOST"),
            set("CONTAINER_HOST"),
            on_path("docker"),
            on_path("podman"),
        )
    }

    /// [`Program::from_environment`]'s rule, on what it found.
    pub fn choose(docker_host: bool, container_host: bool, docker: bool, podman: bool) -> Program {
        if (container_host && !docker_host) || (podman && !docker) {
            Program::Podman
        } else {
            Program::Docker
        }
    }
}

/// The pid of the process named `daemon` (`comm`), seen through the host's pids (the agent's
/// `--pid=host`, the plugin's `pidhost`). Its `/proc/PID/root` and `/proc/PID/ns/mnt` are
/// the host's as the engine sees them; host PID 1 may refuse to be opened, as on some VMs.
/// A daemon in this process's user namespace comes first: a user's rootless dockerd (or
/// rootless Podman's conmon) has a mount namespace of its own, which is not the engine's.
pub fn daemon_pid(daemon: &str) -> Option<u32> {
    let named: Vec<(u32, Option<PathBuf>)> = processes_named(daemon)
        .map(|pid| (pid, std::fs::read_link(format!("/proc/{pid}/ns/user")).ok()))
        .collect();
    let own = std::fs::read_link("/proc/self/ns/user").ok();
    choose_daemon(&named, own.as_deref())
}

/// The pids of the processes named `comm`, lowest first.
pub fn processes_named(comm: &str) -> impl Iterator<Item = u32> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |pid| process_name(*pid).is_some_and(|name| name == comm))
}

/// Process `pid`'s name (`comm`).
pub fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// [`daemon_pid`]'s choice among the processes of that name, with their user namespaces:
/// the first in `own`, else the first.
fn choose_daemon(named: &[(u32, Option<PathBuf>)], own: Option<&Path>) -> Option<u32> {
    named
        .iter()
        .find(|(_, userns)| own.is_some() && userns.as_deref() == own)
        .or(named.first())
        .map(|(pid, _)| *pid)
}

/// How the engine that answers runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Rootful,
    Rootless,
    /// A rootful daemon with `userns-remap`: container root is a subordinate uid on disk.
    UsernsRemap,
    Podman,
    /// Podman run by a user: container root is that user on disk, other ids subordinate ones.
    PodmanRootless,
    DockerDesktop,
}

impl Kind {
    /// Reads the kind from `docker version` and `docker info` (both as JSON).
    pub fn of(version: &Value, info: &Value) -> Kind {
        let server = &version["Server"];
        let names = std::iter::once(&server["Platform"]["Name"]).chain(
            server["Components"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| &c["Name"]),
        );
        if names
            .filter_map(Value::as_str)
            .any(|n| n.contains("Podman"))
        {
            Kind::Podman
        } else if [&info["OperatingSystem"], &server["Platform"]["Name"]]
            .iter()
            .filter_map(|v| v.as_str())
            .any(|name| name.contains("Docker Desktop"))
        {
            Kind::DockerDesktop
        } else if security_options(info).any(|o| o.contains("name=rootless")) {
            Kind::Rootless
        } else if security_options(info).any(|o| o.contains("name=userns")) {
            Kind::UsernsRemap
        } else {
            Kind::Rootful
        }
    }

    /// Whether containers run in a user namespace of the engine's own, so that container ids
    /// are stored on disk as other (subordinate) ids: asme's mappings, which name container
    /// ids, would then store the owner's files as those (issue 14), so asme keeps out.
    pub fn remaps_ids(self) -> bool {
        matches!(
            self,
            Kind::Rootless | Kind::UsernsRemap | Kind::PodmanRootless
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Rootful => "rootful",
            Kind::Rootless => "rootless",
            Kind::UsernsRemap => "userns-remap",
            Kind::Podman => "podman",
            Kind::PodmanRootless => "podman-rootless",
            Kind::DockerDesktop => "docker-desktop",
        }
    }
}

/// The host uid and gid a userns-remap daemon stores container root as, from its data root
/// (`/var/lib/docker/165536.165536`).
pub fn remap_base(docker_root_dir: &str) -> Option<(u32, u32)> {
    let last = docker_root_dir.trim_end_matches('/').rsplit('/').next()?;
    let (uid, gid) = last.split_once('.')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// The engine's security options (`docker info`), e.g. `name=seccomp,profile=default`.
pub fn security_options(info: &Value) -> impl Iterator<Item = &str> {
    info["SecurityOptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remapping_daemon_names_its_base_in_its_data_root() {
        assert_eq!(
            remap_base("/var/lib/docker/165536.165536"),
            Some((165536, 165536))
        );
        assert_eq!(
            remap_base("/tmp/remap/root/200000.300000/"),
            Some((200000, 300000))
        );
        for none in ["/var/lib/docker", "/x/165536", "/x/a.b", ""] {
            assert_eq!(remap_base(none), None, "{none}");
        }
    }

    /// `GET /version` and `GET /info` of each kind: recorded from the engines asme is
    /// tested on (rootful, rootless and userns-remap dockerd 20.10, Podman 4.3's service);
    /// Docker Desktop's reduced to the fields asme reads, as public reports show them.
    #[test]
    fn kinds_are_read_from_recorded_answers() {
        let read = |name: &str| -> Value { serde_json::from_str(name).unwrap() };
        let docker_version = read(include_str!("testdata/rootful.version.json"));
        let desktop_version = read(include_str!("testdata/desktop-mac.version.json"));
        let cases = [
            (
                "rootful",
                &docker_version,
                include_str!("testdata/rootful.info.json"),
                Kind::Rootful,
            ),
            (
                "rootless",
                &read(include_str!("testdata/rootless.version.json")),
                include_str!("testdata/rootless.info.json"),
                Kind::Rootless,
            ),
            (
                "userns-remap",
                &read(include_str!("testdata/userns-remap.version.json")),
                include_str!("testdata/userns-remap.info.json"),
                Kind::UsernsRemap,
            ),
            (
                "podman",
                &read(include_str!("testdata/podman.version.json")),
                include_str!("testdata/podman.info.json"),
                Kind::Podman,
            ),
            (
                "desktop-mac",
                &desktop_version,
                include_str!("testdata/desktop-mac.info.json"),
                Kind::DockerDesktop,
            ),
            (
                "desktop-windows",
                &docker_version,
                include_str!("testdata/desktop-windows.info.json"),
                Kind::DockerDesktop,
            ),
            (
                "desktop-linux",
                &docker_version,
                include_str!("testdata/desktop-linux.info.json"),
                Kind::DockerDesktop,
            ),
        ];
        for (name, version, info, want) in cases {
            // `docker version` nests the server's answer under "Server", as Engine::kind does.
            let version = serde_json::json!({ "Server": version });
            assert_eq!(Kind::of(&version, &read(info)), want, "{name}");
        }
        // Desktop's version alone names it, whatever its info says.
        let version = serde_json::json!({ "Server": desktop_version });
        let info = read(include_str!("testdata/rootful.info.json"));
        assert_eq!(Kind::of(&version, &info), Kind::DockerDesktop);
        // The remapping daemon's data root names its subordinate base.
        let remap = read(include_str!("testdata/userns-remap.info.json"));
        let root = remap["DockerRootDir"].as_str().unwrap();
        assert_eq!(remap_base(root), Some((165536, 165536)));
    }

    #[test]
    fn the_daemon_in_our_user_namespace_is_the_engines() {
        let host = PathBuf::from("user:[4026531837]");
        let rootless = PathBuf::from("user:[4026532200]");
        // A user's rootless dockerd started first (a lower pid) is passed over.
        let named = [(100, Some(rootless.clone())), (200, Some(host.clone()))];
        assert_eq!(choose_daemon(&named, Some(&host)), Some(200));
        // Where none is in ours (or ours cannot be read), the first.
        assert_eq!(choose_daemon(&named[..1], Some(&host)), Some(100));
        assert_eq!(choose_daemon(&[(7, None)], None), Some(7));
        assert_eq!(choose_daemon(&[], Some(&host)), None);
    }

    #[test]
    fn the_environment_names_the_engine() {
        // (DOCKER_HOST, CONTAINER_HOST, docker on PATH, podman on PATH)
        for (found, want) in [
            ((false, false, true, false), Program::Docker),
            ((false, false, true, true), Program::Docker),
            ((false, false, false, true), Program::Podman),
            ((false, true, true, true), Program::Podman),
            ((true, true, true, true), Program::Docker),
            ((false, false, false, false), Program::Docker),
        ] {
            let (docker_host, container_host, docker, podman) = found;
            assert_eq!(
                Program::choose(docker_host, container_host, docker, podman),
                want,
                "{found:?}"
            );
        }
    }
}

//! Which engine asme drives (`--engine`), and what kind of engine answers (rootful,
//! rootless, Podman, Docker Desktop), read from its `version` and `info`.

use serde::Serialize;
use serde_json::Value;

/// The engine CLI asme drives; one entry per supported engine, so another engine is one new
/// variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Program {
    #[default]
    Docker,
}

impl Program {
    /// The command that drives this engine.
    pub fn command(self) -> &'static str {
        match self {
            Program::Docker => "docker",
        }
    }

    /// The name (`comm`) of the daemon process whose mount namespace resolves bind sources.
    pub fn daemon(self) -> &'static str {
        match self {
            Program::Docker => "dockerd",
        }
    }
}

/// The pid of the process named `daemon` (`comm`), seen through the host's pids (the agent's
/// `--pid=host`, the plugin's `pidhost`). Its `/proc/PID/root` and `/proc/PID/ns/mnt` are
/// the host's as the engine sees them; host PID 1 may refuse to be opened, as on some VMs.
pub fn daemon_pid(daemon: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == daemon).then_some(pid)
        })
}

/// How the engine that answers runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Rootful,
    Rootless,
    Podman,
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
        } else if info["OperatingSystem"]
            .as_str()
            .is_some_and(|os| os.contains("Docker Desktop"))
        {
            Kind::DockerDesktop
        } else if security_options(info).any(|o| o.contains("name=rootless")) {
            Kind::Rootless
        } else {
            Kind::Rootful
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Rootful => "rootful",
            Kind::Rootless => "rootless",
            Kind::Podman => "podman",
            Kind::DockerDesktop => "docker-desktop",
        }
    }
}

/// The engine's security options (`docker info`), e.g. `name=seccomp,profile=default`.
pub fn security_options(info: &Value) -> impl Iterator<Item = &str> {
    info["SecurityOptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

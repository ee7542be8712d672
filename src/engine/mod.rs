//! The container engine, driven through its own CLI.
//!
//! Going through `docker` rather than the API socket keeps every piece of the user's setup
//! (contexts, DOCKER_HOST, TLS, config.json, credential helpers) working exactly as in
//! `docker run`, for about 10 ms a call. This module turns the CLI's failures into one line
//! that says what to do.
//!
//! Below it: `api` (the socket, for fast reads), `image` (inspect, pull, probe, asme's own
//! image), `kind` (which engine this is), `mount_arg` (docker's `--mount` syntax).

pub mod api;
pub mod image;
pub mod kind;
pub mod mount_arg;
pub mod rootless;

pub use image::{ImageConfig, PullPolicy};
pub use kind::{Kind, Program};

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use mount_arg::Access;

/// Label of asme's own images, so that `asme agent stop` can remove them all.
pub const SELF_IMAGE_LABEL: &str = "asme.image=1";

/// Where the injected asme binary appears inside containers.
pub const INIT_PATH: &str = "/.asme-init";

/// An engine's CLI that talks to an engine on this machine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub program: Program,
    /// The engine's API socket, when plain settings make it certain (no context, DOCKER_HOST
    /// unset or unix://): image inspection then skips the CLI's ~10 ms start-up.
    socket: Option<PathBuf>,
    /// What names the engine the CLI talks to (DOCKER_HOST, a context's host,
    /// CONTAINER_HOST, or `podman`), `None` for the default Docker engine: what tells two
    /// engines on one host apart (each has its own agent).
    pub endpoint: Option<String>,
}

impl Engine {
    /// Finds the CLI and makes sure the engine it talks to runs on this machine, since asme
    /// bind-mounts its own binary and account files from here.
    pub fn detect(program: Program) -> Result<Engine> {
        let mut engine = Engine::cli(program);
        engine.endpoint = engine.check_local()?;
        // Podman's socket speaks a compatible API, but asme reads it through its CLI.
        if program == Program::Docker {
            engine.socket = api::socket();
        }
        Ok(engine)
    }

    /// The CLI on PATH, wherever its engine is (enough for `docker run --help`).
    pub fn cli(program: Program) -> Engine {
        Engine {
            program,
            socket: None,
            endpoint: None,
        }
    }

    /// Checks that the engine is on this machine; returns what names it, if not the default.
    fn check_local(&self) -> Result<Option<String>> {
        if self.program == Program::Podman {
            // Podman's remote client reads CONTAINER_HOST; it has no docker contexts.
            return match std::env::var("CONTAINER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
            {
                Some(host) => check_endpoint(&host, "CONTAINER_HOST").map(|()| Some(host)),
                None => Ok(Some("podman".to_string())),
            };
        }
        if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            return check_endpoint(&host, "DOCKER_HOST").map(|()| Some(host));
        }
        let Some(context) = current_context() else {
            return Ok(None);
        };
        if context == "default" {
            return Ok(None);
        }
        let host = self
            .output([
                "context",
                "inspect",
                "--format",
                "{{.Endpoints.docker.Host}}",
                &context,
            ])
            .with_context(|| format!("inspecting docker context '{context}'"))?;
        let host = host.trim().to_string();
        check_endpoint(&host, &format!("docker context '{context}'")).map(|()| Some(host))
    }

    /// Runs `docker ARGV` with this terminal and returns its exit status.
    pub fn status(&self, argv: &[String]) -> Result<i32> {
        let status = Command::new(self.program.command())
            .args(argv)
            .status()
            .context("running docker")?;
        Ok(status.code().unwrap_or(125))
    }

    /// The engine's API socket, where plain settings make it certain.
    pub fn api_socket(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// One GET on the engine's API socket, where plain settings make the socket certain:
    /// (status, body), or `None` where only the CLI can ask (a context, a remote host) or the
    /// socket did not answer.
    pub fn api_get(&self, path: &str) -> Option<(u16, Vec<u8>)> {
        api::get(self.socket.as_ref()?, path).ok()
    }

    /// What kind of engine answers, where it can be told cheaply: Docker's API socket (two
    /// GETs of about a millisecond), or for Podman (whose Docker-compatible answers do not
    /// say whether it runs rootless) who runs it. `None` where neither answers (a context:
    /// then asme does not know, and assumes a rootful engine).
    pub fn kind(&self) -> Option<Kind> {
        self.kind_and_info().map(|(kind, _)| kind)
    }

    /// The kind, and (for Docker's API) `docker info`.
    fn kind_and_info(&self) -> Option<(Kind, serde_json::Value)> {
        match self.program {
            Program::Docker => {
                let json = |path: &str| {
                    self.api_get(path)
                        .filter(|(status, _)| *status == 200)
                        .and_then(|(_, body)| serde_json::from_slice(&body).ok())
                };
                let version: serde_json::Value = json("/version")?;
                let info: serde_json::Value = json("/info")?;
                // `docker version` nests the server's answer under "Server".
                let kind = Kind::of(&serde_json::json!({ "Server": version }), &info);
                Some((kind, info))
            }
            Program::Podman => {
                // A local podman is rootless exactly when not run as root (Podman's own
                // rule); `podman info` (half a second: it asks dpkg about its helpers) only
                // for a remote one.
                let rootless = match self.endpoint.as_deref() {
                    None | Some("podman") => !rustix::process::geteuid().is_root(),
                    Some(_) => {
                        let info = self.output(["info", "--format", "{{.Host.Security.Rootless}}"]);
                        info.ok()?.trim() == "true"
                    }
                };
                let kind = if rootless {
                    Kind::PodmanRootless
                } else {
                    Kind::Podman
                };
                Some((kind, serde_json::Value::Null))
            }
        }
    }

    /// The kind, and for a userns-remap daemon the host uid and gid its container root is
    /// stored as: the daemon names its data root after them (`DockerRootDir` ends in
    /// `/UID.GID`).
    pub fn kind_and_remap(&self) -> Option<(Kind, Option<(u32, u32)>)> {
        let (kind, info) = self.kind_and_info()?;
        let base = if kind == Kind::UsernsRemap {
            info["DockerRootDir"].as_str().and_then(kind::remap_base)
        } else {
            None
        };
        Some((kind, base))
    }

    /// Runs `docker ARGV` as a child that gets the signals sent to asme (for strategies with
    /// work after the run); returns its exit status.
    pub fn run_child(&self, argv: &[String]) -> Result<i32> {
        crate::sys::run_forwarding_signals(self.program.command().as_ref(), argv)
            .with_context(|| format!("running {}", self.program.command()))
    }

    /// Replaces this process with `docker ARGV`: from here on docker's own behaviour (tty,
    /// signal proxy, `--rm`, exit status) is exactly what the user gets.
    pub fn exec(&self, argv: &[String]) -> anyhow::Error {
        let err = Command::new(self.program.command()).args(argv).exec();
        anyhow!(err).context(format!("running {}", self.program.command()))
    }

    fn run_captured<I, S>(&self, args: I) -> Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(self.program.command())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    anyhow!("docker: command not found (install the docker CLI, e.g. docker.io)")
                }
                _ => anyhow!(e).context("running docker"),
            })
    }

    /// Runs the CLI and returns its stdout, or its error as one line.
    pub fn output<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self.run_captured(args)?;
        if !output.status.success() {
            return Err(cli_error(&String::from_utf8_lossy(&output.stderr)));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// `--mount` value that puts the asme binary read-only at [`INIT_PATH`]. Read-only matters: the
/// init stays alive as PID 1, and a container process must not write through /proc/1/exe into
/// the host binary (CVE-2019-5736).
pub fn init_mount(exe: &Path) -> String {
    mount_arg::bind_mount(exe, Path::new(INIT_PATH), Access::ReadOnly)
}

fn check_endpoint(host: &str, source: &str) -> Result<()> {
    if host.is_empty() || host.starts_with("unix://") {
        return Ok(());
    }
    bail!(
        "the engine at {host} (from {source}) is not on this machine; asme run \
         bind-mounts files from this machine into the container, so it needs a local engine \
         (a unix:// socket here: change or unset {source})"
    )
}

/// The docker context selected by DOCKER_CONTEXT or config.json, if any.
fn current_context() -> Option<String> {
    if let Some(context) = std::env::var("DOCKER_CONTEXT")
        .ok()
        .filter(|c| !c.is_empty())
    {
        return Some(context);
    }
    let config_dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let text = std::fs::read_to_string(config_dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config.get("currentContext")?.as_str().map(str::to_string)
}

/// Turns a docker CLI failure into one line with the fix, when the fix is known.
fn cli_error(stderr: &str) -> anyhow::Error {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("docker failed without a message");
    let line = line.strip_prefix("Error: ").unwrap_or(line);
    let lower = line.to_ascii_lowercase();
    if lower.contains("cannot connect to the docker daemon") {
        anyhow!(
            "cannot reach the Docker engine: {line} (start it: 'sudo systemctl start docker', \
             or 'sudo dockerd &')"
        )
    } else if lower.contains("permission denied") && lower.contains("docker") {
        anyhow!("{line} (is your user in the docker group?)")
    } else {
        anyhow!("{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("unix:///var/run/docker.sock", "DOCKER_HOST").is_ok());
        assert!(check_endpoint("", "DOCKER_HOST").is_ok());
        let err = check_endpoint("tcp://10.0.0.1:2376", "DOCKER_HOST").unwrap_err();
        assert!(err.to_string().contains("not on this machine"), "{err}");
        assert!(check_endpoint("ssh://me@box", "docker context 'box'").is_err());
    }

    #[test]
    fn cli_errors_name_the_fix() {
        let e = cli_error(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n",
        );
        assert!(e.to_string().contains("start it"), "{e}");
        let e = cli_error(
            "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: ...",
        );
        assert!(e.to_string().contains("docker group"), "{e}");
        assert_eq!(
            cli_error("Error: No such object: x\n").to_string(),
            "No such object: x"
        );
    }
}

//! The container engine, driven through its own CLI.
//!
//! Going through `docker` rather than the API socket keeps every piece of the user's setup
//! (contexts, DOCKER_HOST, TLS, config.json, credential helpers) working exactly as in
//! `docker run`, for about 10 ms a call. This module turns the CLI's failures into one line
//! that says what to do.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::init::probe::ImageFacts;
use crate::run::mounts::Access;

/// Label of asme's own images, so that `asme agent stop` can remove them all.
pub const SELF_IMAGE_LABEL: &str = "asme.image=1";

/// Where the injected asme binary appears inside containers.
pub const INIT_PATH: &str = "/.asme-init";

/// A docker CLI that talks to an engine on this machine.
#[derive(Debug, Clone)]
pub struct Docker {
    program: PathBuf,
    /// The engine's API socket, when plain settings make it certain (no context, DOCKER_HOST
    /// unset or unix://): image inspection then skips the CLI's ~10 ms start-up.
    socket: Option<PathBuf>,
}

/// The parts of an image's configuration that `docker run` applies and asme must keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Content id (`sha256:...`): what the image facts cache is keyed by.
    pub id: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// USER from the image, empty for root.
    pub user: String,
    pub env: Vec<String>,
}

/// `docker run --pull` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

impl PullPolicy {
    pub fn parse(value: Option<&str>) -> Result<PullPolicy> {
        match value {
            None | Some("missing") => Ok(PullPolicy::Missing),
            Some("always") => Ok(PullPolicy::Always),
            Some("never") => Ok(PullPolicy::Never),
            Some(other) => bail!(
                "invalid pull option: '{other}': must be one of \"always\", \"missing\" or \"never\""
            ),
        }
    }
}

impl Docker {
    /// Finds the CLI and makes sure the engine it talks to runs on this machine, since asme
    /// bind-mounts its own binary and account files from here.
    pub fn detect() -> Result<Docker> {
        let mut docker = Docker::cli();
        docker.check_local()?;
        docker.socket = api_socket();
        Ok(docker)
    }

    /// The CLI on PATH, wherever its engine is (enough for `docker run --help`).
    pub fn cli() -> Docker {
        Docker {
            program: PathBuf::from("docker"),
            socket: None,
        }
    }

    fn check_local(&self) -> Result<()> {
        if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            return check_endpoint(&host, "DOCKER_HOST");
        }
        let Some(context) = current_context() else {
            return Ok(());
        };
        if context == "default" {
            return Ok(());
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
        check_endpoint(host.trim(), &format!("docker context '{context}'"))
    }

    /// Inspects a local image; `Ok(None)` when the engine does not have it.
    pub fn inspect_image(&self, image: &str) -> Result<Option<ImageConfig>> {
        // The API answers in about a millisecond; anything unexpected goes through the CLI,
        // which also words the errors.
        if let Some(socket) = &self.socket
            && let Ok((status, body)) = api_get(socket, &format!("/images/{image}/json"))
        {
            match status {
                200 => {
                    return parse_image_config(&body)
                        .with_context(|| format!("reading the configuration of image {image}"))
                        .map(Some);
                }
                404 => return Ok(None),
                _ => {}
            }
        }
        let output = self.run_captured(["image", "inspect", "--format", "{{json .}}", image])?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.to_ascii_lowercase().contains("no such image") {
                return Ok(None);
            }
            return Err(cli_error(&stderr));
        }
        parse_image_config(&output.stdout)
            .with_context(|| format!("reading the configuration of image {image}"))
            .map(Some)
    }

    /// Makes the image local the way `docker run --pull POLICY` would.
    pub fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<ImageConfig> {
        if policy == PullPolicy::Always {
            self.pull(image)?;
        }
        if let Some(config) = self.inspect_image(image)? {
            return Ok(config);
        }
        if policy == PullPolicy::Never {
            bail!("no such image: {image} (and --pull=never)");
        }
        eprintln!("Unable to find image '{image}' locally");
        self.pull(image)?;
        self.inspect_image(image)?
            .ok_or_else(|| anyhow!("image {image} is still missing after pulling it"))
    }

    /// `docker pull`, its progress on stderr as `docker run` shows it.
    fn pull(&self, image: &str) -> Result<()> {
        let status = Command::new(&self.program)
            .args(["pull", image])
            .stdout(io::stderr())
            .status()
            .context("running docker pull")?;
        if !status.success() {
            bail!("pulling image {image} failed (see above)");
        }
        Ok(())
    }

    /// Runs `asme probe` as root in a throwaway container of `image_id`.
    pub fn probe(&self, image_id: &str, exe: &Path) -> Result<ImageFacts> {
        let output = self
            .output([
                "run".as_ref(),
                "--rm".as_ref(),
                "--network=none".as_ref(),
                "--user=0:0".as_ref(),
                "--log-driver=none".as_ref(),
                format!("--entrypoint={INIT_PATH}").as_ref(),
                "--mount".as_ref(),
                init_mount(exe).as_ref(),
                OsStr::new(image_id),
                "probe".as_ref(),
            ])
            .with_context(|| format!("probing image {image_id}"))?;
        serde_json::from_str(output.trim())
            .with_context(|| format!("reading the probe of image {image_id}"))
    }

    /// Runs `docker ARGV` with this terminal and returns its exit status.
    pub fn status(&self, argv: &[String]) -> Result<i32> {
        let status = Command::new(&self.program)
            .args(argv)
            .status()
            .context("running docker")?;
        Ok(status.code().unwrap_or(125))
    }

    /// Replaces this process with `docker ARGV`: from here on docker's own behaviour (tty,
    /// signal proxy, `--rm`, exit status) is exactly what the user gets.
    pub fn exec(&self, argv: &[String]) -> anyhow::Error {
        let err = Command::new(&self.program).args(argv).exec();
        anyhow!(err).context(format!("running {}", self.program.display()))
    }

    /// `docker import` of a tar stream (`-` as the source), with Dockerfile-style changes.
    pub fn import(&self, tar: &[u8], tag: &str, changes: &[&str]) -> Result<()> {
        use std::io::Write;
        let mut command = Command::new(&self.program);
        command.arg("import");
        for change in changes {
            command.args(["--change", change]);
        }
        let mut child = command
            .args(["-", tag])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running docker import")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(tar)
            .context("sending the image to docker import")?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            return Err(cli_error(&String::from_utf8_lossy(&output.stderr)));
        }
        Ok(())
    }

    /// asme's own image (its binary alone, at `/asme`), imported once per binary content; the
    /// agent and `asme fix` run in containers of it.
    pub fn self_image(&self, exe: &Path) -> Result<String> {
        let binary = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
        let tag = format!("asme:{:016x}", crate::run::cache::fnv1a(&binary));
        if self.inspect_image(&tag)?.is_none() {
            self.import_self(exe, &tag, &[&format!("LABEL {SELF_IMAGE_LABEL}")])?;
        }
        Ok(tag)
    }

    /// Imports an image that holds nothing but asme's own binary, at `/asme` (the agent's and
    /// doctor's images: nothing is pulled).
    pub fn import_self(&self, exe: &Path, tag: &str, changes: &[&str]) -> Result<()> {
        let binary = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(binary.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, "asme", binary.as_slice())?;
        self.import(&tar.into_inner()?, tag, changes)
    }

    fn run_captured<I, S>(&self, args: I) -> Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(&self.program)
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

/// The engine's socket when nothing but the default or a unix DOCKER_HOST can be in effect.
fn api_socket() -> Option<PathBuf> {
    if current_context().is_some_and(|c| c != "default") {
        return None;
    }
    match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        None => Some(PathBuf::from("/var/run/docker.sock")),
        Some(host) => host.strip_prefix("unix://").map(PathBuf::from),
    }
}

/// One `GET` on the engine API over its unix socket: (status, body). HTTP/1.1 with
/// `Connection: close`, so the body ends where the stream ends (or is chunked).
fn api_get(socket: &Path, path: &str) -> io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain request path",
        ));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_http_response(&response)
}

fn parse_http_response(response: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| bad())?;
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&rest[..end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(rest.get(..size).ok_or_else(bad)?);
        rest = rest.get(size + 2..).ok_or_else(bad)?;
    }
}

/// `--mount` value that puts the asme binary read-only at [`INIT_PATH`]. Read-only matters: the
/// init stays alive as PID 1, and a container process must not write through /proc/1/exe into
/// the host binary (CVE-2019-5736).
pub fn init_mount(exe: &Path) -> String {
    crate::run::mounts::bind_mount(exe, Path::new(INIT_PATH), Access::ReadOnly)
}

fn check_endpoint(host: &str, source: &str) -> Result<()> {
    if host.is_empty() || host.starts_with("unix://") {
        return Ok(());
    }
    bail!(
        "the Docker engine at {host} (from {source}) is not on this machine; asme run \
         bind-mounts files from this machine into the container, so it needs a local engine \
         (unset DOCKER_HOST or choose a local docker context)"
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawImage {
    id: String,
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    env: Option<Vec<String>>,
}

fn parse_image_config(json: &[u8]) -> Result<ImageConfig> {
    let raw: RawImage = serde_json::from_slice(json)?;
    let config = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        id: raw.id,
        entrypoint: config.entrypoint,
        cmd: config.cmd,
        user: config.user.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_from_inspect_json() {
        let json = br#"{"Id":"sha256:abc","Config":{"Entrypoint":["/ep"],"Cmd":null,"User":"app","Env":["PATH=/bin"]}}"#;
        let config = parse_image_config(json).unwrap();
        assert_eq!(config.id, "sha256:abc");
        assert_eq!(config.entrypoint, Some(vec!["/ep".to_string()]));
        assert_eq!(config.cmd, None);
        assert_eq!(config.user, "app");
        // docker import without changes leaves Config null.
        let bare = parse_image_config(br#"{"Id":"sha256:x","Config":null}"#).unwrap();
        assert_eq!(
            bare,
            ImageConfig {
                id: "sha256:x".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn http_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":1}";
        assert_eq!(
            parse_http_response(plain).unwrap(),
            (200, b"{\"Id\":1}".to_vec())
        );
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno s\r\n7\r\nuch img\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked).unwrap(),
            (404, b"no such img".to_vec())
        );
        for broken in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(parse_http_response(broken).is_err());
        }
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("unix:///var/run/docker.sock", "DOCKER_HOST").is_ok());
        assert!(check_endpoint("", "DOCKER_HOST").is_ok());
        let err = check_endpoint("tcp://10.0.0.1:2376", "DOCKER_HOST").unwrap_err();
        assert!(err.to_string().contains("not on this machine"), "{err}");
        assert!(check_endpoint("ssh://me@box", "docker context 'box'").is_err());
    }

    #[test]
    fn pull_policies() {
        assert_eq!(PullPolicy::parse(None).unwrap(), PullPolicy::Missing);
        assert_eq!(
            PullPolicy::parse(Some("always")).unwrap(),
            PullPolicy::Always
        );
        assert_eq!(PullPolicy::parse(Some("never")).unwrap(), PullPolicy::Never);
        assert!(PullPolicy::parse(Some("sometimes")).is_err());
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

//! Installing the driver: the managed plugin `asme`, built here from asme's own binary (a
//! rootfs folder and its `config.json`, given to `docker plugin create`: nothing is pulled),
//! and `asme plugin serve`, what runs inside it.
//!
//! A docker-group user can create and enable a plugin without sudo. The plugin's description
//! names the build, so an upgraded asme replaces an older plugin by itself, as the agent does.

use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

use super::driver::Driver;
use super::http;
use super::mapping::{VOLUMES, Volumes};
use crate::engine::Engine;

/// The plugin's (and so the driver's) name: `docker volume create -d asme`.
pub const NAME: &str = "asme";

/// Where the plugin keeps its state (which volumes exist, which are mounted): in the engine's
/// own data root (`DockerRootDir/asme-plugin`). So it lasts across plugin and engine restarts and across `asme plugin install` of a new
/// build (a plugin's own rootfs is replaced with it), and two engines on one host (a test's
/// own dockerd) never share it. Root's, mode 0700; it holds no data, only the volumes'
/// definitions. The plugin learns the data root from its environment ([`ROOT_ENV`]).
const STATE_IN_ROOT: &str = "asme-plugin";

/// The plugin's environment variable naming the engine's data root (a host path): the
/// state goes there, and the host side of the propagated mount is found there.
const ROOT_ENV: &str = "ASME_ENGINE_ROOT";

/// The socket dockerd expects, from `interface.socket` in the config.
const SOCKET: &str = "/run/docker/plugins/asme.sock";

/// What `docker plugin inspect` says of an installed plugin.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Missing,
    /// Installed from this very build; enabled or not.
    Current {
        enabled: bool,
    },
    /// Installed from another build.
    Other,
}

impl Status {
    /// How `asme plugin status` and `asme doctor` say it.
    pub fn describe(&self) -> &'static str {
        match self {
            Status::Missing => "not installed (asme run installs it when a container needs it)",
            Status::Current { enabled: true } => "installed and enabled",
            Status::Current { enabled: false } => "installed, not enabled",
            Status::Other => "installed from another asme build (asme run replaces it)",
        }
    }
}

/// The plugin's description, naming this build.
fn description() -> String {
    format!("asme volume driver, build {}", env!("ASME_BUILD"))
}

pub fn status(engine: &Engine) -> Result<Status> {
    // The API answers in about a millisecond (asme run asks at every run that uses the
    // driver); anything unexpected goes through the CLI.
    if let Some((status, body)) = engine.api_get(&format!("/plugins/{NAME}/json")) {
        match status {
            404 => return Ok(Status::Missing),
            200 => {
                if let Ok(plugin) = serde_json::from_slice::<serde_json::Value>(&body) {
                    let described = plugin["Config"]["Description"].as_str();
                    return Ok(if described == Some(&description()) {
                        Status::Current {
                            enabled: plugin["Enabled"] == true,
                        }
                    } else {
                        Status::Other
                    });
                }
            }
            _ => {}
        }
    }
    let out = match engine.output([
        "plugin",
        "inspect",
        "--format",
        "{{.Enabled}} {{.Config.Description}}",
        NAME,
    ]) {
        Ok(out) => out,
        Err(e) if e.to_string().contains("not found") => return Ok(Status::Missing),
        Err(e) => return Err(e.context("inspecting the asme plugin")),
    };
    let (enabled, described) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
    if described != description() {
        return Ok(Status::Other);
    }
    Ok(Status::Current {
        enabled: enabled == "true",
    })
}

/// Why the driver cannot run on rootless Docker (`docker plugin enable` fails there mounting
/// /proc for a plugin that shares the host's pid namespace, which asme's needs).
pub const ROOTLESS: &str = "the volume driver cannot run on rootless Docker: its plugin needs \
                            the host's pid namespace, which a rootless engine cannot give";

/// `asme plugin install`: makes sure this build's plugin is installed and enabled.
///
/// Several asme runs may do this at once (an upgrade, a compose project): one may remove the
/// plugin another has just made. So a failed attempt counts as done if the plugin is there
/// and enabled after it, and is tried again otherwise.
pub fn install(engine: &Engine, exe: &Path) -> Result<()> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match install_once(engine, exe) {
            Ok(()) => return Ok(()),
            Err(_) if status(engine).ok() == Some(Status::Current { enabled: true }) => {
                return Ok(());
            }
            Err(e) if attempts >= 3 => return Err(e),
            Err(_) => {}
        }
    }
}

fn install_once(engine: &Engine, exe: &Path) -> Result<()> {
    match status(engine)? {
        Status::Current { enabled: true } => return Ok(()),
        // Asked only here, where a plugin would be made: the usual path stays one call.
        _ if engine.kind() == Some(crate::engine::Kind::Rootless) => bail!(ROOTLESS),
        Status::Current { enabled: false } => {}
        Status::Other => {
            remove(engine)?;
            create(engine, exe)?;
        }
        Status::Missing => create(engine, exe)?,
    }
    match engine.output(["plugin", "enable", NAME]) {
        Ok(_) => Ok(()),
        // Another asme enabled it at the same moment.
        Err(e) if e.to_string().contains("already enabled") => Ok(()),
        Err(e) => Err(e.context("enabling the asme plugin")),
    }
}

/// `asme plugin uninstall`: disables and removes the plugin (its volumes' definitions go
/// with it; their folders are never touched).
pub fn uninstall(engine: &Engine) -> Result<()> {
    if status(engine)? != Status::Missing {
        remove(engine)?;
    }
    Ok(())
}

fn remove(engine: &Engine) -> Result<()> {
    let _ = engine.output(["plugin", "disable", "-f", NAME]);
    match engine.output(["plugin", "rm", "-f", NAME]) {
        Err(e) if !e.to_string().contains("not found") => {
            Err(e.context("removing the asme plugin"))
        }
        _ => Ok(()),
    }
}

/// `docker plugin create` from a folder holding `config.json` and `rootfs/` (asme's binary
/// and the folders the plugin uses).
fn create(engine: &Engine, exe: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("asme-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| {
        let rootfs = dir.join("rootfs");
        for folder in [
            "proc",
            "dev",
            "sys",
            "tmp",
            "etc",
            "run/docker/plugins",
            VOLUMES,
        ] {
            let path = rootfs.join(folder.trim_start_matches('/'));
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        std::fs::copy(exe, rootfs.join("asme")).context("copying asme into the plugin")?;
        let config = config(&data_root(engine)?);
        std::fs::write(dir.join("config.json"), config.to_string())?;
        let dir = dir.to_string_lossy().into_owned();
        engine
            .output(["plugin", "create", NAME, &dir])
            .map(drop)
            .context("creating the asme plugin")
    })();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        // Another asme created it at the same moment.
        Err(e) if format!("{e:#}").contains("already exists") => Ok(()),
        other => other,
    }
}

/// The engine's data root, where the plugin's state goes: from the API, else the CLI.
fn data_root(engine: &Engine) -> Result<String> {
    let from_api = engine
        .api_get("/info")
        .filter(|(status, _)| *status == 200)
        .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .and_then(|info| info["DockerRootDir"].as_str().map(str::to_string));
    let root = match from_api {
        Some(root) => root,
        None => engine
            .output(["info", "--format", "{{.DockerRootDir}}"])
            .context("asking the engine for its data root")?
            .trim()
            .to_string(),
    };
    if !root.starts_with('/') {
        bail!("the engine names no data root ({root:?}): the plugin needs one for its state");
    }
    Ok(root)
}

/// The plugin's configuration. Its privileges are what the mapping needs: entering the
/// engine's mount namespace (the host's pids, SYS_PTRACE to open `/proc/PID/ns/mnt`,
/// SYS_ADMIN), making idmapped and FUSE mounts (SYS_ADMIN, /dev/fuse), the user namespace
/// that carries the mapping (SETUID, SETGID, SETFCAP) and serving a user's share as that
/// user (SETUID, SETGID). Containers get nothing from them: they only see the mounts.
fn config(data_root: &str) -> serde_json::Value {
    json!({
        "description": description(),
        "documentation": "asme plugin --help",
        "entrypoint": ["/asme", "plugin", "serve"],
        "interface": {"types": [super::protocol::INTERFACE], "socket": "asme.sock"},
        "propagatedMount": VOLUMES,
        "network": {"type": "host"},
        "pidhost": true,
        "env": [{
            "name": ROOT_ENV, "description": "the engine's data root, a host path",
            "settable": ["value"], "value": data_root
        }],
        "linux": {"capabilities": [
            "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
            "CAP_SETUID", "CAP_SETGID", "CAP_SETFCAP"
        ], "devices": [{"path": "/dev/fuse"}]}
    })
}

/// `asme plugin serve` (inside the plugin): answers dockerd until SIGTERM or SIGINT.
pub fn serve() -> Result<()> {
    if !Path::new(VOLUMES).is_dir() {
        bail!("{VOLUMES} is missing: asme plugin serve runs inside the asme plugin");
    }
    let root = std::env::var(ROOT_ENV)
        .with_context(|| format!("{ROOT_ENV} is not set: the plugin's config names it"))?;
    let root = Path::new(&root);
    // Both are the plugin container's: dockerd finds the socket there, and the propagated
    // mount is known by its inode on the other side.
    let listener = http::bind(Path::new(SOCKET))?;
    let inside = rustix::fs::stat(VOLUMES).context(VOLUMES)?;
    // While this process has one thread: setns(2) refuses to move a threaded one.
    let daemon = crate::engine::kind::daemon_pid(crate::engine::Program::Docker.daemon())
        .unwrap_or_else(|| rustix::process::getppid().map_or(1, |p| p.as_raw_pid() as u32));
    crate::sys::mount::enter_mount_namespace(daemon)
        .with_context(|| format!("entering the engine's mount namespace (pid {daemon})"))?;
    let volumes = propagated_mount(root, (inside.st_dev, inside.st_ino))?;

    // PID 1 of the plugin ignores SIGTERM unless it handles it: `docker plugin disable`
    // would wait for its timeout.
    let stop = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT]);
    stop.thread_block().context("blocking signals")?;
    std::thread::spawn(move || {
        let _ = stop.wait();
        std::process::exit(0);
    });
    let driver = Driver::start(&root.join(STATE_IN_ROOT), volumes)?;
    http::serve(listener, move |path, body| driver.answer(path, body))
}

/// The host side of this plugin's propagated mount: the `DATA_ROOT/plugins/*/propagated-mount`
/// that is the same folder (device and inode) as [`VOLUMES`] inside.
fn propagated_mount(root: &Path, inside: (u64, u64)) -> Result<Volumes> {
    let plugins = root.join("plugins");
    let entries =
        std::fs::read_dir(&plugins).with_context(|| format!("reading {}", plugins.display()))?;
    for entry in entries.flatten() {
        let candidate = entry.path().join("propagated-mount");
        if let Ok(st) = rustix::fs::stat(&candidate)
            && (st.st_dev, st.st_ino) == inside
        {
            return Ok(Volumes(candidate));
        }
    }
    bail!(
        "found no propagated mount of this plugin under {}",
        plugins.display()
    )
}

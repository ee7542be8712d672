//! `asme context install | uninstall`: a docker context named `asme` whose endpoint is the
//! proxy's socket, so `docker context use asme` (or `--context asme`, or
//! `DOCKER_HOST=unix://SOCKET`) sends every client through it. Where `systemd --user` runs,
//! also a socket-activated user unit, so the proxy starts on the first connection; elsewhere
//! the command says how to start `asme proxy`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::engine::Engine;

/// The context's (and the units') name.
pub const NAME: &str = "asme";

/// `asme context install`: the context (replaced if it is there), and the units where
/// systemd runs for the user. Returns what to tell the user.
pub fn install(engine: &Engine, socket: &Path, exe: &Path) -> Result<String> {
    let _ = engine.output(["context", "rm", "-f", NAME]);
    let endpoint = format!("host=unix://{}", socket.display());
    engine
        .output([
            "context",
            "create",
            NAME,
            "--description",
            "asme proxy: bind mounts written as you",
            "--docker",
            &endpoint,
        ])
        .context("creating the docker context")?;
    let mut said = format!(
        "docker context '{NAME}' points at {}; use it with `docker context use {NAME}`, \
         `docker --context {NAME} ...` or DOCKER_HOST=unix://{}\n",
        socket.display(),
        socket.display()
    );
    if systemd_user_runs() {
        write_units(socket, exe)?;
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", &format!("{NAME}-proxy.socket")])?;
        said.push_str("systemd starts the proxy on the first connection (asme-proxy.socket)\n");
    } else {
        said.push_str(&format!(
            "no systemd user instance here: start the proxy yourself, e.g. `{} proxy --socket \
             {} &` (in a CI runner's start-up, or your shell's profile)\n",
            exe.display(),
            socket.display()
        ));
    }
    Ok(said)
}

/// `asme context uninstall`: the context and the units go; the proxy's socket goes with its
/// process.
pub fn uninstall(engine: &Engine) -> Result<()> {
    match engine.output(["context", "rm", "-f", NAME]) {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => return Err(e.context("removing the docker context")),
    }
    if systemd_user_runs() {
        let _ = systemctl(&["disable", "--now", &format!("{NAME}-proxy.socket")]);
        let _ = systemctl(&["stop", &format!("{NAME}-proxy.service")]);
        for unit in units_dir()
            .iter()
            .flat_map(|d| ["socket", "service"].map(|kind| d.join(format!("{NAME}-proxy.{kind}"))))
        {
            let _ = std::fs::remove_file(unit);
        }
        let _ = systemctl(&["daemon-reload"]);
    }
    Ok(())
}

/// Whether a systemd user instance answers (`systemctl --user` reaches it).
fn systemd_user_runs() -> bool {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(|dir| Path::new(&dir).join("systemd/private").exists())
        .unwrap_or(false)
}

fn units_dir() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(config.join("systemd/user"))
}

/// The two units: the socket systemd listens on, and the service it starts there.
fn write_units(socket: &Path, exe: &Path) -> Result<()> {
    let Some(dir) = units_dir() else {
        bail!("no HOME: cannot write the systemd user units");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket_unit = format!(
        "[Unit]\nDescription=asme proxy socket (Docker API, bind mounts written as you)\n\n\
         [Socket]\nListenStream={}\nSocketMode=0600\nRemoveOnStop=yes\n\n\
         [Install]\nWantedBy=sockets.target\n",
        socket.display()
    );
    let service_unit = format!(
        "[Unit]\nDescription=asme proxy\nRequires={NAME}-proxy.socket\n\n\
         [Service]\nExecStart={} proxy --socket {}\n",
        exe.display(),
        socket.display()
    );
    for (name, text) in [
        (format!("{NAME}-proxy.socket"), socket_unit),
        (format!("{NAME}-proxy.service"), service_unit),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .status()
        .context("running systemctl --user")?;
    if !status.success() {
        bail!("systemctl --user {} failed", args.join(" "));
    }
    Ok(())
}

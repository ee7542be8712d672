//! The agent's container: connecting to it, starting it when it is not there, replacing one
//! of another build, and `asme agent stop`.
//!
//! Many `asme run`s may find the agent stopped at once (after every engine restart or
//! reboot). Starting it is therefore made of steps that the engine serialises itself: create
//! under the one name (only one creation wins), start that container (starting a running one
//! changes nothing), and remove only a container of another build, by its id (a racer that
//! already replaced it loses nothing). No client ever removes the agent that another client is
//! using.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::protocol::RunDir;
use crate::engine::{Engine, SELF_IMAGE_LABEL};

/// Label on everything agent-related, so `asme agent stop` finds it all.
const LABEL: &str = "asme.agent=1";
/// How long starting the agent and any one request may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Connects to the agent, starting it first if it does not answer.
pub fn connect_or_start(engine: &Engine, exe: &Path) -> Result<UnixStream> {
    let socket = run_dir(engine).socket();
    match UnixStream::connect(&socket) {
        Ok(conn) => return Ok(conn),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            bail!(
                "cannot use the asme agent at {}: {e} (is your user in the docker group?)",
                socket.display()
            )
        }
        Err(_) => {}
    }
    let image = engine.self_image(exe)?;
    let deadline = Instant::now() + DEADLINE;
    ensure_running(engine, &image, deadline)?;
    for attempt in 0.. {
        match UnixStream::connect(&socket) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "the asme agent did not come up within {DEADLINE:?} ({e}){}",
                    agent_log(engine)
                );
            }
            Err(_) => {}
        }
        // Every 200 ms, make sure it has not died on the way up.
        if attempt % 10 == 9 && !inspect(engine).is_some_and(|c| c.running) {
            bail!("the asme agent stopped while starting{}", agent_log(engine));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// The agent folder of `engine` (each engine on a host has its own agent).
pub fn run_dir(engine: &Engine) -> RunDir {
    RunDir::for_endpoint(engine.endpoint.as_deref())
}

/// The agent container as the engine knows it.
struct Found {
    id: String,
    image: String,
    running: bool,
}

fn inspect(engine: &Engine) -> Option<Found> {
    let out = engine
        .output([
            "container",
            "inspect",
            "--format",
            "{{.Id}} {{.Config.Image}} {{.State.Running}}",
            &run_dir(engine).container_name(),
        ])
        .ok()?;
    let mut fields = out.split_whitespace();
    Some(Found {
        id: fields.next()?.to_string(),
        image: fields.next()?.to_string(),
        running: fields.next()? == "true",
    })
}

/// Brings the agent of `image` to running, whatever other clients do at the same moment.
fn ensure_running(engine: &Engine, image: &str, deadline: Instant) -> Result<()> {
    loop {
        let step = match inspect(engine) {
            Some(found) if found.running && found.image == image => return Ok(()),
            None => create(engine, image),
            Some(found) if found.image != image => remove(engine, &found.id).map(|()| false),
            Some(_) => engine
                .output(["start", &run_dir(engine).container_name()])
                .map(|_| true),
        };
        match step {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // Lost a race (the name is taken, the container is being removed or started by
            // another client): look again.
            Err(e) if Instant::now() < deadline && is_race(&e) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.context("starting the asme agent container")),
        }
    }
}

/// Engine answers that mean another client is changing the agent container right now.
fn is_race(e: &anyhow::Error) -> bool {
    let text = e.to_string();
    [
        "is already in use",
        "already in progress",
        "marked for removal",
        "No such container",
        "is not running",
    ]
    .iter()
    .any(|race| text.contains(race))
}

/// Creates and starts the agent container. Its privileges are what the kernel sequence needs
/// and no more: joining the host's mount namespace (SYS_ADMIN, SYS_CHROOT, and SYS_PTRACE to
/// open the engine's /proc/PID/ns/mnt), writing id maps (SETUID, SETGID, and SETFCAP, which
/// Linux 5.12+ demands to map a container's root: `verify_root_map`), giving its socket to
/// the docker group and ownership back in `asme fix` (CHOWN), and entering unreadable folders
/// in a fix (DAC_READ_SEARCH). No network, a read-only root, no restart policy. A stopped
/// agent is started again as it is (its log tells why it stopped) until `asme agent stop`.
fn create(engine: &Engine, image: &str) -> Result<bool> {
    let name = run_dir(engine).container_name();
    engine
        .output([
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            LABEL,
            "--pid=host",
            // Not remapped on a userns-remap daemon: the agent needs the host's ids.
            "--userns=host",
            "--network=none",
            "--read-only",
            "--cap-drop=ALL",
            "--cap-add=SYS_ADMIN",
            "--cap-add=SYS_CHROOT",
            "--cap-add=SYS_PTRACE",
            "--cap-add=SETUID",
            "--cap-add=SETGID",
            "--cap-add=SETFCAP",
            "--cap-add=CHOWN",
            "--cap-add=DAC_READ_SEARCH",
            // AppArmor's and SELinux's container policies forbid mount operations outright.
            "--security-opt=apparmor=unconfined",
            "--security-opt=label=disable",
            image,
            "/asme",
            "agent",
            "serve",
            "--daemon",
            engine.program.daemon(),
            "--run-dir",
            &run_dir(engine).0.to_string_lossy(),
        ])
        .map(|_| true)
}

/// Removes the agent container `id` (of another build). It detaches its leases on its way
/// out; its clients are of that other build.
fn remove(engine: &Engine, id: &str) -> Result<()> {
    match engine.output(["rm", "-f", id]) {
        Err(e) if e.to_string().contains("No such container") => Ok(()),
        other => other.map(drop),
    }
}

/// An agent answered that it is of another build: replace it with this build's (once; a
/// client of that other build may replace it back, which is its right). If it already runs
/// this build's image, another run of this build replaced it meanwhile: ask again.
pub fn replace_other_build(engine: &Engine, exe: &Path) -> Result<()> {
    let image = engine.self_image(exe)?;
    match inspect(engine) {
        Some(found) if found.image != image => remove(engine, &found.id),
        Some(_) | None => Ok(()),
    }
}

/// The agent's last words, for an error message.
fn agent_log(engine: &Engine) -> String {
    match engine.output(["logs", "--tail", "2", &run_dir(engine).container_name()]) {
        Ok(log) if !log.trim().is_empty() => format!(": {}", log.trim().replace('\n', "; ")),
        _ => String::new(),
    }
}

/// `asme agent stop`: stops the agent (it detaches every lease on its way out) and removes
/// its container and asme's images.
pub fn stop(engine: &Engine) -> Result<()> {
    let name = run_dir(engine).container_name();
    for step in [
        &["stop", "--time", "10", name.as_str()][..],
        &["rm", "-f", name.as_str()],
    ] {
        match engine.output(step) {
            Ok(_) => {}
            // docker: "No such container"; podman: "no such container".
            Err(e) if e.to_string().to_lowercase().contains("no such container") => {}
            Err(e) => return Err(e.context("stopping the asme agent")),
        }
    }
    let images = engine.output([
        "images",
        "-q",
        "--filter",
        &format!("label={SELF_IMAGE_LABEL}"),
    ])?;
    for id in images.split_whitespace() {
        let _ = engine.output(["image", "rm", "-f", id]);
    }
    Ok(())
}

//! `asme proxy`: a Docker Engine API endpoint run by the user, in front of the real engine,
//! so that every client (the CLI, compose, IDEs, CI runners, SDKs) gets asme's mapping with
//! nothing but `DOCKER_HOST` or a docker context changed.
//!
//! - `rewrite`: container creation's bind mounts of the user's folders made volumes of the
//!   driver (pure).
//! - `sources`: what a bind source is, as the user, and the container's user from the image.
//! - `forward`: one request to the engine; streams and upgraded (hijacked) connections.
//! - `context`: `asme context install | uninstall`, and the systemd user units.
//!
//! The proxy sits beside `run`: it uses the layers below (`engine`, `cache`, `plugin`,
//! `owner`), and nothing uses it.

pub mod context;
pub mod forward;
pub mod rewrite;
pub mod sources;

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{SigSet, Signal};

use crate::cache::Cache;
use crate::engine::{Engine, Program};
use forward::Proxy;

/// Where the proxy listens unless told: `$XDG_RUNTIME_DIR/asme/docker.sock`, or asme's cache
/// folder where there is no runtime folder.
pub fn default_socket() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return Ok(Path::new(&dir).join("asme/docker.sock"));
    }
    Ok(Cache::open()?.root().join("docker.sock"))
}

/// `asme proxy`: serves until SIGTERM or SIGINT, then removes its socket.
pub fn main(program: Program, owner: crate::owner::Owner, socket: Option<PathBuf>) -> Result<()> {
    let socket = match socket {
        Some(socket) => std::path::absolute(&socket)?,
        None => default_socket()?,
    };
    let engine = Engine::detect(program)?;
    let engine_socket = engine.api_socket().map(Path::to_path_buf).context(
        "the proxy needs the engine's unix socket (unset DOCKER_HOST or use a local one)",
    )?;
    if engine_socket == socket {
        bail!(
            "DOCKER_HOST points at this proxy's own socket {}: start it with the engine's",
            socket.display()
        );
    }
    let exe = std::env::current_exe().context("finding asme's own binary")?;
    // Rewritten binds become volumes of the driver: it must be there before any create.
    crate::plugin::install::install(&engine, &exe).context("installing asme's volume driver")?;
    let listener = match activated_socket()? {
        Some(listener) => listener,
        None => bind(&socket)?,
    };
    // A userns-remap daemon stores container id C as base + C: the volumes name those ids.
    let remap = engine.kind_and_remap().and_then(|(_, base)| base);
    let proxy = Arc::new(Proxy {
        engine: engine_socket,
        owner,
        sources: Box::new(sources::UserSources {
            owner,
            engine,
            exe,
            cache: Cache::open()?,
            remap,
        }),
    });
    let stop = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT]);
    stop.thread_block().context("blocking signals")?;
    let removing = socket.clone();
    std::thread::spawn(move || {
        let _ = stop.wait();
        let _ = std::fs::remove_file(&removing);
        std::process::exit(0);
    });
    println!("listening on {}", socket.display());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    serve(listener, proxy)
}

/// The socket, made afresh (a stale one from a killed proxy is replaced), 0600 in a 0700
/// folder of the user's.
fn bind(socket: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!("{}: another proxy answers there already", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    // Made 0600 from the start: no moment where another user could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(socket);
    rustix::process::umask(old);
    let listener = bound.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The listening socket systemd passed (socket activation: `LISTEN_PID` is us and
/// `LISTEN_FDS` at least 1, the socket at fd 3).
fn activated_socket() -> Result<Option<std::os::unix::net::UnixListener>> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if !ours || count < 1 {
        return Ok(None);
    }
    let fd: OwnedFd =
        crate::sys::fd::take_inherited(3).context("taking systemd's socket (fd 3)")?;
    Ok(Some(std::os::unix::net::UnixListener::from(fd)))
}

fn serve(listener: std::os::unix::net::UnixListener, proxy: Arc<Proxy>) -> Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .context("starting the proxy's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors, or a client gone before accept: keep serving.
                Err(_) => continue,
            };
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| forward::handle(Arc::clone(&proxy), request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

//! Strategy `fuse`: like idmap, but each bind source is served by `asme mount`, run as the
//! user, with the owner shown as the container's user. For sources the kernel or the engine
//! cannot idmap: filesystems that refuse idmapped mounts (NFS, FUSE), and FUSE shares the
//! user mounted without `allow_other`, which neither the engine nor the agent may enter.
//!
//! On a rootless engine (Docker, Podman) the servers run in its user and mount namespaces,
//! which the user owns: the engine sees their mounts there, and they store what the
//! container's user writes as the user's own id inside (root there), the user on the host.
//!
//! docker runs as a child; when it returns, the host's view of each mount is detached, and its
//! server exits when the container lets go of it (at once, or when a `-d` container stops).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{Launch, Name, Prepared, Refusal, container_ids, durable, keep::keep_user};
use crate::engine::rootless::RootlessNamespaces;
use crate::fs;
use crate::plugin::options::Mapping;
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::mounts;

pub fn prepare<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
    prepare_in(ctx, args, None)
}

/// On a rootless engine: served in its own namespaces (no volume driver runs there, so a
/// container that outlives the run keeps the mounts of this run only).
pub fn prepare_rootless<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
    let rootless = RootlessNamespaces::of(&ctx.engine, ctx.owner).map_err(Refusal::Unavailable)?;
    prepare_in(ctx, args, Some(rootless))
}

fn prepare_in<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    rootless: Option<RootlessNamespaces>,
) -> Result<Prepared<'a>, Refusal> {
    let container = container_ids(ctx, args)?;
    super::refuse_root_owner(ctx, Name::Fuse)?;
    let binds = mounts::bind_mounts(args);
    ctx.say(format_args!(
        "strategy fuse: the container keeps uid {}:{}; {} bind mount(s) are served by asme \
         mount, storing its writes as {}",
        container.0,
        container.1,
        binds.len(),
        ctx.owner
    ));
    let open = super::open_binds(ctx, args)?;
    let mut prepared = keep_user(ctx, args);
    if rootless.is_none()
        && let Some(durable) = durable::driver_args(ctx, args, &open, container, Mapping::Fuse)
    {
        prepared.args = durable;
        return Ok(prepared);
    }
    // This run's own servers: the user mounts, and docker must reach the mounts.
    fs::mount::usable_for_docker(rootless.is_some()).map_err(Refusal::Unavailable)?;
    let owner = rootless.map_or((ctx.owner.uid, ctx.owner.gid), |d| d.owner_inside);
    let map = fs::map::OwnerMap::single(owner, container);
    let mut mounted = FuseMounts {
        points: Vec::new(),
        rootless,
        exe: &ctx.exe,
    };
    for (i, source) in open.paths.iter().enumerate() {
        let point = ctx
            .cache
            .mount_dir()
            // The name is what docker shows when the container is started again without
            // asme (the mount point gone, `--mount` refuses it): it says what to do.
            .join(format!(
                "{}-{i}-start-again-with-asme-run",
                std::process::id()
            ));
        std::fs::create_dir_all(&point)
            .with_context(|| format!("creating {}", point.display()))
            .map_err(Refusal::Unavailable)?;
        // A container that chowns its data to a service user (a database) keeps it the
        // owner's on disk.
        let how = fs::mount::ServerOptions {
            record_owners: true,
            enter: rootless.map(|d| d.pid),
            ..Default::default()
        };
        if let Err(e) = fs::mount::spawn_server(&ctx.exe, &map, source, &point, how) {
            let _ = std::fs::remove_dir(&point);
            return Err(Refusal::Unavailable(e));
        }
        mounted.points.push(point);
    }
    prepared.args = mounts::with_sources(args, &binds, &mounted.points);
    prepared.launch = Launch::Child {
        after: Box::new(move || drop(mounted)),
    };
    Ok(prepared)
}

/// The host side of the fuse strategy's mounts: detached (lazily: a `-d` container still
/// uses them) and their folders removed when dropped, whatever happened.
struct FuseMounts<'a> {
    points: Vec<PathBuf>,
    /// The rootless engine in whose namespaces they were mounted.
    rootless: Option<RootlessNamespaces>,
    exe: &'a Path,
}

impl Drop for FuseMounts<'_> {
    fn drop(&mut self) {
        for point in &self.points {
            let detached = match self.rootless {
                None => fs::mount::umount(point, true, None),
                // This process has threads, and setns needs one: a child of its own does it.
                Some(rootless) => umount_in_namespaces(self.exe, point, rootless.pid),
            };
            if let Err(e) = detached {
                eprintln!("asme: {e:#}");
            }
            let _ = std::fs::remove_dir(point);
        }
    }
}

fn umount_in_namespaces(exe: &Path, point: &Path, pid: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new(exe)
        .args([
            "umount",
            "--lazy",
            "--enter-namespaces-of",
            &pid.to_string(),
        ])
        .arg(point)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running asme umount")?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().next().unwrap_or("failed").trim();
    anyhow::bail!("{}", line.strip_prefix("asme: ").unwrap_or(line))
}

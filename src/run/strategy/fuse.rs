//! Strategy `fuse`: like idmap, but each bind source is served by `asme mount`, run as the
//! user, with the owner shown as the container's user. For sources the kernel or the engine
//! cannot idmap: filesystems that refuse idmapped mounts (NFS, FUSE), and FUSE shares the
//! user mounted without `allow_other`, which neither the engine nor the agent may enter.
//!
//! docker runs as a child; when it returns, the host's view of each mount is detached, and its
//! server exits when the container lets go of it (at once, or when a `-d` container stops).

use std::path::PathBuf;

use anyhow::Context as _;

use super::{Launch, Name, Prepared, Refusal, container_ids, durable, keep::keep_user};
use crate::fs;
use crate::plugin::options::Mapping;
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::mounts;

pub fn prepare<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
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
    if let Some(durable) = durable::driver_args(ctx, args, &open, container, Mapping::Fuse) {
        prepared.args = durable;
        return Ok(prepared);
    }
    // This run's own servers: the user mounts, and docker (root) must reach the mounts.
    fs::mount::usable_for_docker().map_err(Refusal::Unavailable)?;
    let map = fs::map::OwnerMap::single((ctx.owner.uid, ctx.owner.gid), container);
    let mut mounted = FuseMounts(Vec::new());
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
            ..Default::default()
        };
        if let Err(e) = fs::mount::spawn_server(&ctx.exe, &map, source, &point, how) {
            let _ = std::fs::remove_dir(&point);
            return Err(Refusal::Unavailable(e));
        }
        mounted.0.push(point);
    }
    prepared.args = mounts::with_sources(args, &binds, &mounted.0);
    prepared.launch = Launch::Child {
        after: Box::new(move || drop(mounted)),
    };
    Ok(prepared)
}

/// The host side of the fuse strategy's mounts: detached (lazily: a `-d` container still
/// uses them) and their folders removed when dropped, whatever happened.
struct FuseMounts(Vec<PathBuf>);

impl Drop for FuseMounts {
    fn drop(&mut self) {
        for point in &self.0 {
            if let Err(e) = fs::mount::umount(point, true) {
                eprintln!("asme: {e:#}");
            }
            let _ = std::fs::remove_dir(point);
        }
    }
}

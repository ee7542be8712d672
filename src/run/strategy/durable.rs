//! Containers that outlive the run (no `--rm`) are mounted again at every `docker start`, by
//! docker alone: their mappings must then be the engine's, so their bind mounts become
//! anonymous volumes of asme's volume driver, which maps them the same way (idmap, or FUSE
//! where the folder needs it). Shared by the idmap and fuse strategies.

use std::os::fd::AsFd;

use super::OpenBinds;

use crate::plugin;
use crate::plugin::options::{Access, Mapping, anonymous_volume};
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::mounts;

/// The docker argv with each bind mount made a volume of the driver (installing it if
/// needed), mapped as `mapping` says, or `None` when the run keeps its own mappings: `--rm`,
/// a bind mount a volume cannot stand for (a file, options a volume cannot say), or no
/// driver.
pub fn driver_args(
    ctx: &Context,
    args: &RunArgs,
    open: &OpenBinds,
    container: (u32, u32),
    mapping: Mapping,
) -> Option<RunArgs> {
    if args.flag("rm") {
        return None;
    }
    let values = open
        .binds
        .iter()
        .zip(&open.sources)
        .map(|(bind, fd)| {
            let target = mounts::volume_target(args, bind)?;
            if !crate::sys::mount::is_dir(fd.as_fd()).ok()? {
                return None;
            }
            let source = std::fs::canonicalize(bind.absolute_source(&ctx.cwd)).ok()?;
            let access = if target.read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            Some(anonymous_volume(
                &target.dest,
                &source,
                ctx.owner,
                container,
                access,
                mapping,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    match plugin::install::install(&ctx.engine, &ctx.exe) {
        Ok(()) => {
            ctx.say(
                "the container can outlive this run: its bind mounts are volumes of asme's \
                 driver, so docker start keeps the mapping",
            );
            Some(mounts::with_mount_values(args, &open.binds, &values))
        }
        Err(e) => {
            ctx.say(format_args!(
                "the volume driver is not available ({e:#}); docker start of this container \
                 will be refused"
            ));
            None
        }
    }
}

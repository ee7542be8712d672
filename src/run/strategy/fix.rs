//! Strategy `fix` (only when asked): run as plain docker would, then give what the
//! container's user left in the bind mounts back to the owner, however the run ended (exit,
//! `docker kill`, Ctrl-C or SIGTERM to asme). A journal entry covers the case where asme
//! itself is killed outright: the next `asme run` or `asme fix` completes the repair.

use super::{Launch, Prepared, Refusal, container_ids, keep::keep_user};
use crate::fix::{self, journal};
use crate::owner::Owner;
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::mounts;

pub fn prepare<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
    let (uid, gid) = container_ids(ctx, args)?;
    let from = Owner { uid, gid };
    let paths = super::sources(ctx, &mounts::bind_mounts(args));
    ctx.say(format_args!(
        "strategy fix: the container runs as {from}; afterwards what it left in {} bind \
         mount(s) is given to {}",
        paths.len(),
        ctx.owner
    ));
    let (pid, started) = journal::this_process();
    let pending = journal::Pending {
        pid,
        started,
        owner: ctx.owner,
        from,
        paths,
    };
    let entry =
        journal::Entry::write(&ctx.cache.pending_dir(), &pending).map_err(Refusal::Unavailable)?;
    let mut prepared = keep_user(ctx, args);
    prepared.launch = Launch::Child {
        after: Box::new(move || {
            let program = ctx.engine.program;
            match fix::repair(program, ctx.verbose, &pending.paths, pending.owner, from) {
                Ok(_) => entry.done(),
                Err(e) => eprintln!(
                    "asme: giving the bind mounts back failed ({e:#}); the next asme run or \
                     asme fix tries again"
                ),
            }
        }),
    };
    Ok(prepared)
}

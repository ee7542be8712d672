//! Engines that run containers in a user namespace of their own (rootless Docker or Podman,
//! userns-remap): container ids are stored on disk as other (subordinate) ids. asme's
//! mappings must then name the ids as the engine sees them, or they would store the owner's
//! files as subordinate ids (`fix` once handed a user's whole folder to 101233 that way).
//! A userns-remap daemon is served by idmap itself (host-side ids); the rest is here.

use anyhow::{Result, bail};

use super::{Name, Prepared, Refusal, container_ids, fuse, keep};
use crate::cli::Strategy;
use crate::engine::Kind;
use crate::run::Context;
use crate::run::args::RunArgs;

/// A rootless engine (Docker or Podman): what container root writes is already the user's
/// (root inside is the user), so a root container runs as plain docker would. Another
/// container user (an image's USER, `--user`) or a program that changes users gets the fuse
/// strategy, served in the engine's own namespaces, which stores its writes as the user; on
/// Podman a non-root user gets Podman's own `--userns=keep-id` instead. Where FUSE cannot
/// serve, auto says why and runs the container as plain docker would: never worse.
pub fn on_rootless_engine<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    strategy: Strategy,
    kind: Kind,
) -> Result<(Name, Prepared<'a>)> {
    match Name::chosen(strategy) {
        Some(Name::Fuse) => {
            return fuse::prepare_rootless(ctx, args)
                .map(|prepared| (Name::Fuse, prepared))
                .map_err(anyhow::Error::from);
        }
        // Podman's keep-id makes the owner's own uid theirs in the container: the user
        // strategy (the owner's account and HOME) then writes as them.
        Some(Name::User) if kind == Kind::PodmanRootless && args.last("userns").is_none() => {
            let mut prepared = super::user::prepare(ctx, args).map_err(anyhow::Error::from)?;
            let owner = ctx.owner;
            let keep_id = format!("keep-id:uid={},gid={}", owner.uid, owner.gid);
            prepared
                .args
                .opts
                .push(crate::run::args::Opt::new("userns", Some(&keep_id)));
            return Ok((Name::User, prepared));
        }
        Some(name) => bail!(
            "--strategy {} does not work on a {} engine: only fuse, user on Podman, or auto \
             store your files as you there",
            name.as_str(),
            kind.name()
        ),
        None => {}
    }
    let container = container_ids(ctx, args).map_err(anyhow::Error::from)?;
    let several_uids = super::runs_a_program_that_changes_users(ctx, args);
    if crate::run::mounts::bind_mounts(args).is_empty() || (container.0 == 0 && !several_uids) {
        ctx.say(format_args!(
            "strategy keep: on a {} engine container root is you on disk, so the container \
             runs as plain {} would run it",
            kind.name(),
            ctx.engine.program.command()
        ));
        return Ok((Name::Keep, keep::keep_user(ctx, args)));
    }
    if kind == Kind::PodmanRootless && container.0 != 0 && args.last("userns").is_none() {
        return Ok((Name::Keep, keep_id(ctx, args, container)));
    }
    match fuse::prepare_rootless(ctx, args) {
        Ok(prepared) => Ok((Name::Fuse, prepared)),
        Err(Refusal::Fatal(e)) => Err(e),
        Err(why) => {
            eprintln!(
                "asme: notice: fuse strategy unavailable ({why:#}); on a {} engine the \
                 container runs as plain {} would, so what uid {} writes is stored as a \
                 subordinate id",
                kind.name(),
                ctx.engine.program.command(),
                container.0
            );
            Ok((Name::Keep, keep::keep_user(ctx, args)))
        }
    }
}

/// Podman's own answer for a non-root container user: its user namespace maps the user to
/// that user, so what it writes is stored as the user, at native speed once Podman has
/// prepared the image's layers for that mapping (`bench/podman.sh`).
fn keep_id<'a>(ctx: &'a Context, args: &RunArgs, container: (u32, u32)) -> Prepared<'a> {
    let mut prepared = keep::keep_user(ctx, args);
    let keep_id = format!("keep-id:uid={},gid={}", container.0, container.1);
    ctx.say(format_args!(
        "strategy keep: on rootless podman --userns={keep_id} stores what uid {} writes as you",
        container.0
    ));
    prepared
        .args
        .opts
        .push(crate::run::args::Opt::new("userns", Some(&keep_id)));
    prepared
}

/// A userns-remap daemon where idmap could not serve: asme runs the container as plain docker
/// would, and says what the engine does; an explicit strategy is refused.
pub fn on_userns_remap<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    strategy: Strategy,
) -> Result<(Name, Prepared<'a>)> {
    if let Some(name) = Name::chosen(strategy) {
        bail!(
            "--strategy {} does not work on a userns-remap engine: it would store your files \
             as the engine's subordinate ids (use the default, auto)",
            name.as_str()
        );
    }
    eprintln!(
        "asme: notice: a userns-remap engine stores every container id, root's too, as a \
         subordinate id; without idmap the container runs as plain docker would run it"
    );
    Ok((Name::Keep, keep::keep_user(ctx, args)))
}

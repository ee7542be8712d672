//! Engines that run containers in a user namespace of their own (rootless Docker or Podman,
//! userns-remap): container ids are stored on disk as other (subordinate) ids. asme's
//! mappings must then name the ids as the engine sees them, or they would store the owner's
//! files as subordinate ids (`fix` once handed a user's whole folder to 101233 that way).
//! A userns-remap daemon is handled by idmap itself (host-side ids); the rest is here.

use anyhow::{Result, bail};

use super::{Name, Prepared, Refusal, container_ids, fuse, keep};
use crate::cli::Strategy;
use crate::engine::Kind;
use crate::run::Context;
use crate::run::args::RunArgs;

/// Rootless Docker: what container root writes is already the user's (root inside is the
/// user), so a root container runs as plain docker would. Another container user (an
/// image's USER, `--user`) or a program that changes users gets the fuse strategy, served in
/// the daemon's own namespaces, which stores its writes as the user. Where FUSE cannot
/// serve, auto says why and runs the container as plain docker would: never worse.
pub fn on_rootless_docker<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    strategy: Strategy,
) -> Result<(Name, Prepared<'a>)> {
    match Name::chosen(strategy) {
        Some(Name::Fuse) => {
            return match fuse::prepare_rootless(ctx, args) {
                Ok(prepared) => Ok((Name::Fuse, prepared)),
                Err(why) => Err(why.into()),
            };
        }
        Some(name) => bail!(
            "--strategy {} does not work on rootless Docker: only fuse (or auto) can store \
             your files as you there",
            name.as_str()
        ),
        None => {}
    }
    let container = container_ids(ctx, args).map_err(anyhow::Error::from)?;
    let several_uids = super::runs_a_program_that_changes_users(ctx, args);
    if super::super::mounts::bind_mounts(args).is_empty() || (container.0 == 0 && !several_uids) {
        ctx.say(
            "strategy keep: on rootless docker container root is you on disk, so the \
             container runs as plain docker would run it",
        );
        return Ok((Name::Keep, keep::keep_user(ctx, args)));
    }
    match fuse::prepare_rootless(ctx, args) {
        Ok(prepared) => Ok((Name::Fuse, prepared)),
        Err(Refusal::Fatal(e)) => Err(e),
        Err(why) => {
            eprintln!(
                "asme: notice: fuse strategy unavailable ({why:#}); on rootless docker the \
                 container runs as plain docker would, so uid {} writes as a subordinate id",
                container.0
            );
            Ok((Name::Keep, keep::keep_user(ctx, args)))
        }
    }
}

/// Rootless Podman, or a userns-remap daemon where idmap could not serve: asme runs the
/// container as plain podman or docker would (with Podman's own keep-id for a non-root
/// container user), and says what the engine does; an explicit strategy is refused.
pub fn on_remapping_engine<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    strategy: Strategy,
    kind: Kind,
) -> Result<(Name, Prepared<'a>)> {
    if let Some(name) = Name::chosen(strategy) {
        bail!(
            "--strategy {} does not work on a {} engine yet: it would store your files as the \
             engine's subordinate ids (use the default, auto, which runs the container as \
             plain docker would)",
            name.as_str(),
            kind.name()
        );
    }
    let mut prepared = keep::keep_user(ctx, args);
    let container = container_ids(ctx, args).map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
    if kind == Kind::PodmanRootless && container.0 != 0 && args.last("userns").is_none() {
        // Podman's own answer: its user namespace maps the user to the container's user,
        // so what that user writes is stored as the user (as root's is without it).
        let keep_id = format!("keep-id:uid={},gid={}", container.0, container.1);
        ctx.say(format_args!(
            "rootless podman: --userns={keep_id} stores what uid {} writes as you",
            container.0
        ));
        prepared
            .args
            .opts
            .push(crate::run::args::Opt::new("userns", Some(&keep_id)));
        return Ok((Name::Keep, prepared));
    }
    eprintln!("asme: notice: {}", remapping_notice(kind));
    Ok((Name::Keep, prepared))
}

/// What a remapping engine does with bind-mount writes, in one line.
fn remapping_notice(kind: Kind) -> String {
    let what = if kind == Kind::UsernsRemap {
        "a userns-remap engine stores every container id, root's too, as a subordinate id"
    } else {
        "a rootless engine already stores what container root writes as you, and other \
         container users' writes as subordinate ids"
    };
    format!(
        "{what}; asme does not map those yet, so the container runs as plain docker would run \
         it ({} engine)",
        kind.name()
    )
}

//! The strategies, behind one small interface, and `auto`: one ordered list, used by `asme
//! run` and by `asme doctor` alike.
//!
//! A strategy prepares a run: the docker arguments (bind sources swapped where it maps
//! them), what asme injects (its init, an account), and how docker is launched. Or it says why
//! it cannot serve this run, typed, so that `auto` knows whether the next one can. A new
//! strategy is one file here and one line in [`Name`].

mod durable;
mod fix;
mod fuse;
mod idmap;
mod keep;
mod remapping;
mod user;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::Context;
use super::args::RunArgs;
use super::mounts::{self, BindKind};
use super::plan::Injection;
use crate::agent::Lease;
use crate::cli::Strategy;

/// Every strategy, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// The owner is root: nothing to map, the container keeps its own user.
    Keep,
    Idmap,
    Fuse,
    User,
    Fix,
}

/// `auto`, in order: the first that can serve the run is used.
pub const AUTO: [Name; 4] = [Name::Keep, Name::Idmap, Name::Fuse, Name::User];

/// `auto` for a container whose program changes users (a database's entrypoint): fuse first,
/// since only its recorded owners keep every file the owner's when several uids write.
pub const AUTO_SEVERAL_UIDS: [Name; 4] = [Name::Keep, Name::Fuse, Name::Idmap, Name::User];

impl Name {
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Keep => "keep",
            Name::Idmap => "idmap",
            Name::Fuse => "fuse",
            Name::User => "user",
            Name::Fix => "fix",
        }
    }

    /// The strategy `--strategy` names; `None` for auto.
    pub fn chosen(strategy: Strategy) -> Option<Name> {
        match strategy {
            Strategy::Auto => None,
            Strategy::Idmap => Some(Name::Idmap),
            Strategy::Fuse => Some(Name::Fuse),
            Strategy::User => Some(Name::User),
            Strategy::Fix => Some(Name::Fix),
        }
    }

    fn prepare<'a>(self, ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
        match self {
            Name::Keep => keep::prepare(ctx, args),
            Name::Idmap => idmap::prepare(ctx, args),
            Name::Fuse => fuse::prepare(ctx, args),
            Name::User => user::prepare(ctx, args),
            Name::Fix => fix::prepare(ctx, args),
        }
    }

    /// Whether `auto` tries this strategy, given why the ones before it could not serve.
    fn fits(self, ctx: &Context, before: Option<&Refusal>, several_uids: bool) -> bool {
        match self {
            Name::Keep => ctx.owner.uid == 0,
            // Only where a source or the container needs it: idmap is faster wherever it
            // works. Whether FUSE is usable here is its own prepare's first check (and its
            // refusal is in the notice).
            Name::Fuse => several_uids || matches!(before, Some(Refusal::Source(_))),
            Name::Idmap | Name::User => true,
            Name::Fix => false,
        }
    }
}

/// What a strategy decided for a run.
pub struct Prepared<'a> {
    /// The docker arguments to use (bind sources replaced where the strategy maps them).
    pub args: RunArgs,
    pub inject: Injection<'a>,
    pub launch: Launch<'a>,
}

/// How docker is started.
pub enum Launch<'a> {
    /// asme becomes docker (exec), so tty, signals, `--rm`, `-d` and the exit status are
    /// docker's own. A lease is kept open across the exec: it ends exactly when docker does.
    Exec { lease: Option<Lease> },
    /// docker runs as a child that gets the signals sent to asme; `after` runs once it
    /// returns, however it ended.
    Child { after: Box<dyn FnOnce() + 'a> },
}

/// Why a strategy cannot serve this run.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A bind source that this strategy cannot map but the user can read (its filesystem
    /// refuses idmapped mounts, or the engine may not reach it): FUSE, run as the user, can.
    #[error("{0}")]
    Source(String),
    /// It cannot work here (no agent, no FUSE, a root owner...): the next one may.
    #[error(transparent)]
    Unavailable(anyhow::Error),
    /// The run itself is wrong (a missing bind source, an unknown --user): no strategy can
    /// serve it, and docker would refuse it the same way.
    #[error(transparent)]
    Fatal(anyhow::Error),
}

/// Prepares the run with `--strategy` or, for auto, with the first strategy of [`AUTO`] that
/// can serve it; tells the user (one notice line) when auto passed over one that failed.
pub fn prepare<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    strategy: Strategy,
) -> Result<(Name, Prepared<'a>)> {
    if let Some((kind, remap)) = ctx.kind.filter(|(k, _)| k.remaps_ids()) {
        // A userns-remap daemon is rootful: idmap can name the ids it stores.
        let idmap_wanted = matches!(Name::chosen(strategy), None | Some(Name::Idmap));
        if let Some(base) = remap.filter(|_| idmap_wanted) {
            match idmap::prepare_remapped(ctx, args, base) {
                Ok(prepared) => return Ok((Name::Idmap, prepared)),
                Err(Refusal::Fatal(e)) => return Err(e),
                Err(why) if Name::chosen(strategy).is_some() => return Err(why.into()),
                Err(why) => eprintln!("asme: notice: idmap strategy unavailable ({why:#})"),
            }
        }
        if kind == crate::engine::Kind::UsernsRemap {
            return remapping::on_userns_remap(ctx, args, strategy);
        }
        return remapping::on_rootless_engine(ctx, args, strategy, kind);
    }
    if let Some(name) = Name::chosen(strategy) {
        return match name.prepare(ctx, args) {
            Ok(prepared) => Ok((name, prepared)),
            Err(Refusal::Source(why)) => bail!("{why}"),
            Err(Refusal::Unavailable(e) | Refusal::Fatal(e)) => Err(e),
        };
    }
    let several_uids = runs_a_program_that_changes_users(ctx, args);
    let order = if several_uids {
        ctx.say(
            "the image's program changes users (a service that chowns its data): auto tries \
             fuse first, which keeps every file yours",
        );
        AUTO_SEVERAL_UIDS
    } else {
        AUTO
    };
    // The strategies auto passed over, and why: the user hears of each in one notice line.
    let mut passed: Vec<(Name, Refusal)> = Vec::new();
    for name in order {
        if !name.fits(ctx, passed.last().map(|(_, why)| why), several_uids) {
            continue;
        }
        match name.prepare(ctx, args) {
            Ok(prepared) => {
                if !passed.is_empty() {
                    let reasons: Vec<String> = passed
                        .iter()
                        .map(|(failed, why)| {
                            format!("{} strategy unavailable ({why:#})", failed.as_str())
                        })
                        .collect();
                    eprintln!(
                        "asme: notice: {}; using the {} strategy",
                        reasons.join("; "),
                        name.as_str()
                    );
                }
                return Ok((name, prepared));
            }
            Err(Refusal::Fatal(e)) => return Err(e),
            Err(why) if name == Name::User => return Err(why.into()),
            Err(why) => passed.push((name, why)),
        }
    }
    unreachable!("the user strategy always answers")
}

/// Whether the run starts the image's own program and the probe found that it changes users
/// (`init::probe::ProgramFacts`): the one case where several uids will write.
fn runs_a_program_that_changes_users(ctx: &Context, args: &RunArgs) -> bool {
    let Some(program) = ctx.facts.program.as_ref().filter(|p| p.changes_users) else {
        return false;
    };
    let command = super::plan::command_line(args, &ctx.image).unwrap_or_default();
    command.first() == Some(&program.name)
}

/// A run's bind mounts, with each source's path and an `O_PATH` handle of it.
struct OpenBinds {
    binds: Vec<mounts::BindMount>,
    paths: Vec<PathBuf>,
    sources: Vec<OwnedFd>,
}

/// Opens every bind source of the run (checked, and a missing `-v` source created as the
/// owner, as docker would).
fn open_binds(ctx: &Context, args: &RunArgs) -> Result<OpenBinds, Refusal> {
    let binds = mounts::bind_mounts(args);
    let paths = sources(ctx, &binds);
    let sources = binds
        .iter()
        .zip(&paths)
        .map(|(bind, path)| open_source(path, bind.kind))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(OpenBinds {
        binds,
        paths,
        sources,
    })
}

fn container_ids(ctx: &Context, args: &RunArgs) -> Result<(u32, u32), Refusal> {
    let spec = args.last("user").unwrap_or(&ctx.image.user);
    super::plan::container_ids(spec, &ctx.facts).map_err(|e| Refusal::Fatal(anyhow::anyhow!(e)))
}

/// Strategies that map the container's user to the owner never store files as host root.
fn refuse_root_owner(ctx: &Context, strategy: Name) -> Result<(), Refusal> {
    if ctx.owner.uid == 0 || ctx.owner.gid == 0 {
        return Err(Refusal::Unavailable(anyhow::anyhow!(
            "the {} strategy never stores files as host root; the owner {} is root",
            strategy.as_str(),
            ctx.owner
        )));
    }
    Ok(())
}

/// Opens a bind source as the user (O_PATH: no read permission needed, but every folder on
/// the way must be searchable by them). A missing `-v` source is created, as docker does,
/// but owned by the user; a missing `--mount` source is refused, as docker does.
fn open_source(path: &Path, kind: BindKind) -> Result<OwnedFd, Refusal> {
    use crate::sys::fs::open_path;
    let fatal = |e: anyhow::Error| Refusal::Fatal(e);
    match open_path(path) {
        Ok(fd) => Ok(fd),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && kind == BindKind::Volume => {
            std::fs::create_dir_all(path)
                .map_err(|e| fatal(anyhow::anyhow!("creating {}: {e}", path.display())))?;
            open_path(path).map_err(|e| fatal(anyhow::anyhow!("opening {}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fatal(anyhow::anyhow!(
            "invalid mount config for type \"bind\": bind source path does not exist: {}",
            path.display()
        ))),
        Err(e) => Err(fatal(anyhow::anyhow!("opening {}: {e}", path.display()))),
    }
}

/// Absolute bind sources of `args`, relative ones taken from the working folder.
fn sources(ctx: &Context, binds: &[mounts::BindMount]) -> Vec<PathBuf> {
    binds.iter().map(|b| b.absolute_source(&ctx.cwd)).collect()
}

//! `asme fix`: give a polluted tree back to its owner, safely, without sudo.
//!
//! Owns who may fix what, and where the walk runs: in this process when asme is root, else as
//! root in the agent, else in a throwaway container of asme's own image, through the engine
//! the user can already use. Also the `fix` strategy's repair after a run and its journal.
//! Which entries change, and the walk itself, are `chown`'s.

pub mod journal;

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::agent;
use crate::chown::{self, HardLinks, Policy, Scope, SummaryTo};
use crate::cli::FixArgs;
use crate::engine::mount_arg::{Access, bind_mount};
use crate::engine::{Engine, Program};
use crate::owner::{self, Owner, OwnerSpec};
use crate::sys::fs as sysfs;

/// One tree to give back, and how.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Canonical: the user's own view of it; the walk never follows a link below it.
    pub path: PathBuf,
    pub policy: Policy,
}

/// How a fix is carried out, besides its trees.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub program: Program,
    pub verbose: bool,
    pub summary: SummaryTo,
}

/// `asme fix`: resolves whose the trees become, then walks them. Returns whether everything
/// went without error.
pub fn main(settings: Settings, owner_flag: Option<OwnerSpec>, args: &FixArgs) -> Result<bool> {
    let trees = trees(owner_flag, args)?;
    let expect = args
        .expect
        .iter()
        .map(|e| parse_dev_ino(e))
        .collect::<Result<Vec<_>>>()?;
    fix_trees(settings, &trees, &expect)
}

/// The trees `args` names, each with its policy, after checking that this user may fix them.
fn trees(owner_flag: Option<OwnerSpec>, args: &FixArgs) -> Result<Vec<Tree>> {
    let from = match args.from.as_deref() {
        None => Scope::ROOT,
        Some(spec) => {
            let spec: OwnerSpec = spec.parse()?;
            Scope::OwnedBy {
                uid: spec.uid,
                gid: spec.gid.unwrap_or(spec.uid),
            }
        }
    };
    let mut trees = Vec::with_capacity(args.paths.len());
    for path in &args.paths {
        let real = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
        identity(&real)?;
        let owner = match args.owner.as_deref() {
            Some("from-path") => {
                let meta = std::fs::metadata(&real)?;
                if meta.uid() == 0 {
                    bail!(
                        "{} belongs to root, so --owner from-path cannot say whose it is: give --owner UID[:GID]",
                        real.display()
                    );
                }
                Owner {
                    uid: meta.uid(),
                    gid: meta.gid(),
                }
            }
            Some(spec) => owner::invoking(Some(spec.parse()?)),
            None => owner::invoking(owner_flag),
        };
        if !rustix::process::geteuid().is_root() {
            check_may_fix(&real, owner)?;
        }
        trees.push(Tree {
            path: real,
            policy: Policy {
                owner,
                scope: if args.all { Scope::All } else { from },
                hard_links: if args.follow_hardlinks {
                    HardLinks::Follow
                } else {
                    HardLinks::Skip
                },
                cross_mounts: args.cross_mounts,
                dry_run: args.dry_run,
            },
        });
    }
    Ok(trees)
}

/// Walks the trees where this user can: here as root (or for a dry run, which changes
/// nothing), else in the agent, else in a container. `expect` (inside asme's container) holds
/// the device and inode each tree must have.
pub fn fix_trees(settings: Settings, trees: &[Tree], expect: &[(u64, u64)]) -> Result<bool> {
    let dry_run = trees.iter().all(|t| t.policy.dry_run);
    // A dry run needs no privilege: an ordinary user walks with their own rights (and hears
    // about the folders they cannot read).
    if rustix::process::geteuid().is_root() || dry_run {
        let mut ok = true;
        for (i, tree) in trees.iter().enumerate() {
            ok &= fix_here(tree, expect.get(i).copied(), settings.summary)?;
        }
        return Ok(ok);
    }
    let engine = Engine::detect(settings.program)?;
    // Root in such an engine's containers is not host root: a fix there would hand the files
    // (and the folder) to a subordinate id instead of the owner.
    if let Some(kind) = engine.kind().filter(|k| k.remaps_ids()) {
        bail!(
            "asme fix needs host root, which a {} engine's containers are not (they would give \
             the files to a subordinate id): run `sudo asme fix` instead",
            kind.name()
        );
    }
    let exe = std::env::current_exe().context("finding the asme binary")?;
    // ASME_NO_AGENT=1: hosts where the agent cannot run (or is not wanted) use a container.
    if std::env::var_os("ASME_NO_AGENT").is_some_and(|v| v == "1") {
        return fix_in_container(&engine, &exe, settings, trees);
    }
    match fix_by_agent(&engine, &exe, trees, settings.summary) {
        Ok(ok) => Ok(ok),
        Err(agent::FixError::Refused(message)) => bail!("{message}"),
        Err(agent::FixError::Unavailable(e)) => {
            if settings.verbose {
                eprintln!("asme: the agent cannot fix here ({e:#}); using a container");
            }
            fix_in_container(&engine, &exe, settings, trees)
        }
    }
}

/// Has the running agent walk each tree as root: no container to start or tear down. Each
/// tree is named by its parent folder, opened here with the user's own rights, and its name.
fn fix_by_agent(
    engine: &Engine,
    exe: &Path,
    trees: &[Tree],
    summary: SummaryTo,
) -> Result<bool, agent::FixError> {
    let mut all_ok = true;
    for tree in trees {
        let path = &tree.path;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(agent::FixError::Refused(format!(
                "{}: the root folder cannot be fixed",
                path.display()
            )));
        };
        let name = std::os::unix::ffi::OsStrExt::as_bytes(name);
        let parent = sysfs::open_folder_path(parent)
            .map_err(|e| agent::FixError::Refused(format!("{}: {e}", parent.display())))?;
        let fixed = agent::fix(engine, exe, parent.as_fd(), name, path, &tree.policy)?;
        for line in &fixed.problems {
            chown::report(line);
        }
        fixed.walked.print(summary);
        all_ok &= fixed.walked.ok;
    }
    Ok(all_ok)
}

/// Gives what container ids `from` left under `paths` back to `owner`: the `fix` strategy's
/// repair after a run. Sources that are not folders of the owner's (a socket, a system
/// folder) are left alone.
pub fn repair(
    program: Program,
    verbose: bool,
    paths: &[PathBuf],
    owner: Owner,
    from: Owner,
) -> Result<bool> {
    if owner == from {
        return Ok(true);
    }
    let is_root = rustix::process::geteuid().is_root();
    let trees: Vec<Tree> = paths
        .iter()
        .filter(|p| p.is_dir() && (is_root || check_may_fix(p, owner).is_ok()))
        .map(|p| Tree {
            path: p.clone(),
            policy: Policy {
                owner,
                scope: Scope::OwnedBy {
                    uid: from.uid,
                    gid: from.gid,
                },
                hard_links: HardLinks::Skip,
                cross_mounts: false,
                dry_run: false,
            },
        })
        .collect();
    if trees.is_empty() {
        return Ok(true);
    }
    let settings = Settings {
        program,
        verbose,
        summary: SummaryTo::StderrWhenNews,
    };
    fix_trees(settings, &trees, &[])
}

/// Completes the repairs that earlier `fix` strategy runs promised but never made (asme was
/// killed outright). Problems are reported; the entry stays for the next try.
pub fn complete_pending(program: Program, verbose: bool, dir: &Path) {
    for (file, pending) in journal::orphaned(dir) {
        eprintln!(
            "asme: completing the repair of an earlier run that was killed (pid {})",
            pending.pid
        );
        match repair(
            program,
            verbose,
            &pending.paths,
            pending.owner,
            pending.from,
        ) {
            Ok(_) => {
                let _ = std::fs::remove_file(&file);
            }
            Err(e) => eprintln!("asme: that repair failed again: {e:#}"),
        }
    }
}

/// Whether `path` is a tree this user may give to `owner`: see [`check_may_fix`].
pub fn may_fix(path: &Path, owner: Owner) -> bool {
    rustix::process::geteuid().is_root() || check_may_fix(path, owner).is_ok()
}

/// An ordinary user may fix only their own trees (the folder or the folder holding it is
/// theirs) and only for themselves: asme must not become a way to take root's files.
fn check_may_fix(path: &Path, owner: Owner) -> Result<()> {
    let me = crate::sys::real_ids().0;
    if owner.uid != me {
        bail!(
            "only root can give files to another user (uid {}); you are uid {me}",
            owner.uid
        );
    }
    let mine = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.uid() == me);
    if !mine(path) && !path.parent().is_some_and(mine) {
        bail!(
            "{} is not yours: neither it nor the folder holding it belongs to uid {me}",
            path.display()
        );
    }
    Ok(())
}

fn parse_dev_ino(text: &str) -> Result<(u64, u64)> {
    let bad = || anyhow::anyhow!("invalid --expect value '{text}'");
    let (dev, ino) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        dev.parse().map_err(|_| bad())?,
        ino.parse().map_err(|_| bad())?,
    ))
}

/// Runs `asme fix` as root in a throwaway container of asme's own image, each tree mounted at
/// its own path (so messages name real paths), with only the capabilities a chown walk needs.
fn fix_in_container(
    engine: &Engine,
    exe: &Path,
    settings: Settings,
    trees: &[Tree],
) -> Result<bool> {
    let image = engine.self_image(exe)?;
    let mut argv: Vec<String> = [
        "run",
        "--rm",
        "--network=none",
        "--user=0:0",
        "--cap-drop=ALL",
        "--cap-add=CHOWN",
        "--cap-add=DAC_READ_SEARCH",
        "--security-opt=no-new-privileges",
        "--read-only",
        "--entrypoint=/asme",
    ]
    .map(String::from)
    .to_vec();
    let mut expect = Vec::new();
    for tree in trees {
        argv.push("--mount".into());
        argv.push(bind_mount(&tree.path, &tree.path, Access::ReadWrite));
        let (dev, ino) = identity(&tree.path)?;
        expect.push(format!("{dev}:{ino}"));
    }
    argv.push(image);
    argv.push("fix".into());
    // Every tree has the same policy here: a user can only fix for themselves, and
    // `from-path` names them too.
    let policy = &trees.first().expect("at least one tree").policy;
    argv.push(format!("--owner={}", policy.owner));
    match policy.scope {
        Scope::All => argv.push("--all".into()),
        Scope::OwnedBy { uid, gid } => argv.push(format!("--from={uid}:{gid}")),
    }
    for (flag, on) in [
        ("--repair", settings.summary == SummaryTo::StderrWhenNews),
        ("--dry-run", policy.dry_run),
        ("--cross-mounts", policy.cross_mounts),
        ("--follow-hardlinks", policy.hard_links == HardLinks::Follow),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    argv.push(format!("--expect={}", expect.join(",")));
    argv.push("--".into());
    argv.extend(trees.iter().map(|t| t.path.to_string_lossy().into_owned()));
    if settings.verbose {
        eprintln!("asme: docker {}", argv.join(" "));
    }
    Ok(engine.status(&argv)? == 0)
}

/// Walks one tree in this process (asme must be root to change anything), after checking that
/// its top is the folder `expect`ed, when given. Returns whether it went without error.
fn fix_here(tree: &Tree, expect: Option<(u64, u64)>, summary: SummaryTo) -> Result<bool> {
    let path = &tree.path;
    sysfs::raise_open_files_limit();
    let top = sysfs::open_top(path).with_context(|| format!("opening {}", path.display()))?;
    if let Some(expected) = expect {
        // The folder the caller checked must be the folder mounted here.
        let inode = sysfs::stat(top.as_fd())?;
        if (inode.dev, inode.ino) != expected {
            bail!(
                "{} changed while asme was starting the fix; nothing was done",
                path.display()
            );
        }
    }
    let progress = std::io::stderr().is_terminal();
    let walked = chown::walk_tree(top, path, &tree.policy, &chown::report, progress)?;
    walked.print(summary);
    Ok(walked.ok)
}

/// The top folder's identity, to check that the folder mounted into a container is the one
/// the caller meant.
fn identity(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a folder", path.display());
    }
    Ok((meta.dev(), meta.ino()))
}

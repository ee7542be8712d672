//! `asme fix`: give a polluted tree back to its owner, safely, without sudo.
//!
//! Owns the policy (which entries change, to what), the summary, and the choice of where the
//! walk runs: in this process when asme is root, otherwise as root in a throwaway container
//! from asme's own image, through the engine the user can already use. The walk itself, and
//! its guarantees against symlinks, hard links, swaps and other filesystems, is `walk`.

pub mod journal;
pub mod walk;

use std::fmt;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::fs::FileType;

use crate::agent;
use crate::cli::{Cli, FixArgs};
use crate::owner::Owner;
use crate::run::engine::Docker;
use crate::run::mounts::{self, Access};
use crate::sys::fs::{self as sysfs, Inode};
use walk::{Reporter, Tally, Walk};

/// Which entries are given to the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Entries whose user is `uid` or whose group is `gid`: root's by default (the usual
    /// docker leftovers), or a container user's.
    OwnedBy { uid: u32, gid: u32 },
    /// Entries owned by anyone but the owner.
    All,
}

impl Scope {
    pub const ROOT: Scope = Scope::OwnedBy { uid: 0, gid: 0 };
}

/// What to do with hard-linked regular files (another name elsewhere may not be the owner's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardLinks {
    Skip,
    Follow,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub owner: Owner,
    pub scope: Scope,
    pub hard_links: HardLinks,
    pub cross_mounts: bool,
    pub dry_run: bool,
}

/// What the walk does with one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Fine,
    Chown { uid: u32, gid: u32 },
    Skip(Skip),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A regular file with this many names: one of them may be outside the tree.
    HardLinked(u64),
    /// A mount point, or an entry on another filesystem.
    OtherFilesystem,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::HardLinked(n) => write!(
                f,
                "a file with {n} hard links (--follow-hardlinks to change it)"
            ),
            Skip::OtherFilesystem => write!(f, "another filesystem (--cross-mounts to enter it)"),
        }
    }
}

/// The policy applied to one inode. Pure.
pub fn decide(policy: &Policy, inode: &Inode) -> Action {
    let owner = policy.owner;
    let (uid, gid) = match policy.scope {
        Scope::OwnedBy { uid, gid } => (
            if inode.uid == uid {
                owner.uid
            } else {
                inode.uid
            },
            if inode.gid == gid {
                owner.gid
            } else {
                inode.gid
            },
        ),
        Scope::All => (owner.uid, owner.gid),
    };
    if (uid, gid) == (inode.uid, inode.gid) {
        return Action::Fine;
    }
    if inode.kind == FileType::RegularFile
        && inode.nlink > 1
        && policy.hard_links == HardLinks::Skip
    {
        return Action::Skip(Skip::HardLinked(inode.nlink));
    }
    Action::Chown { uid, gid }
}

/// Set while a progress line is on the terminal, so that a report first ends it.
static PROGRESS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Prints one problem line on stderr.
pub fn report(line: &str) {
    let mut err = std::io::stderr().lock();
    if PROGRESS_SHOWN.swap(false, Ordering::Relaxed) {
        let _ = write!(err, "\r\x1b[K");
    }
    let _ = writeln!(err, "asme: {line}");
}

/// `asme fix`: resolves whose the trees become, then walks them here (as root) or as root in
/// a container of asme's own image. Returns whether everything went without error.
pub fn main(cli: &Cli, args: &FixArgs) -> Result<bool> {
    let mut paths = Vec::with_capacity(args.paths.len());
    for path in &args.paths {
        // The user's own view of the path; the walk never follows a link below it.
        let real = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
        identity(&real)?;
        paths.push(real);
    }
    let me = crate::sys::real_ids();
    let is_root = rustix::process::geteuid().is_root();
    let from = match args.from.as_deref() {
        None => Scope::ROOT,
        Some(spec) => {
            let spec: crate::owner::OwnerSpec = spec.parse()?;
            Scope::OwnedBy {
                uid: spec.uid,
                gid: spec.gid.unwrap_or(spec.uid),
            }
        }
    };
    let mut policies = Vec::with_capacity(paths.len());
    for path in &paths {
        let owner = match args.owner.as_deref() {
            Some("from-path") => {
                let meta = std::fs::metadata(path)?;
                if meta.uid() == 0 {
                    bail!(
                        "{} belongs to root, so --owner from-path cannot say whose it is: give --owner UID[:GID]",
                        path.display()
                    );
                }
                Owner {
                    uid: meta.uid(),
                    gid: meta.gid(),
                }
            }
            Some(spec) => owner_spec(spec, cli)?,
            None => crate::run::invoking_owner(cli),
        };
        if !is_root {
            check_may_fix(path, owner, me.0)?;
        }
        policies.push(Policy {
            owner,
            scope: if args.all { Scope::All } else { from },
            hard_links: if args.follow_hardlinks {
                HardLinks::Follow
            } else {
                HardLinks::Skip
            },
            cross_mounts: args.cross_mounts,
            dry_run: args.dry_run,
        });
    }
    // A dry run changes nothing, so it needs no privilege: an ordinary user walks with their
    // own rights (and hears about the folders they cannot read).
    if is_root || args.dry_run {
        let expect = args
            .expect
            .iter()
            .map(|e| parse_dev_ino(e))
            .collect::<Result<Vec<_>>>()?;
        let mut ok = true;
        for (i, (path, policy)) in paths.iter().zip(&policies).enumerate() {
            ok &= fix_here(path, policy, expect.get(i).copied(), args.repair)?;
        }
        return Ok(ok);
    }
    let docker = Docker::detect()?;
    let exe = std::env::current_exe().context("finding the asme binary")?;
    // ASME_NO_AGENT=1: hosts where the agent cannot run (or is not wanted) use a container.
    if std::env::var_os("ASME_NO_AGENT").is_some_and(|v| v == "1") {
        return fix_in_container(cli, args, &paths, &policies);
    }
    match fix_by_agent(&docker, &exe, &paths, &policies, args.repair) {
        Ok(ok) => Ok(ok),
        Err(agent::FixError::Refused(message)) => bail!("{message}"),
        Err(agent::FixError::Unavailable(e)) => {
            if cli.verbose {
                eprintln!("asme: the agent cannot fix here ({e:#}); using a container");
            }
            fix_in_container(cli, args, &paths, &policies)
        }
    }
}

/// Has the running agent walk each tree as root: no container to start or tear down. Each
/// tree is named by its parent folder, opened here with the user's own rights, and its name.
fn fix_by_agent(
    docker: &Docker,
    exe: &Path,
    paths: &[PathBuf],
    policies: &[Policy],
    repair: bool,
) -> Result<bool, agent::FixError> {
    let mut all_ok = true;
    for (path, policy) in paths.iter().zip(policies) {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(agent::FixError::Refused(format!(
                "{} is not yours",
                path.display()
            )));
        };
        let name = std::os::unix::ffi::OsStrExt::as_bytes(name);
        let parent = rustix::fs::open(
            parent,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| agent::FixError::Refused(format!("{}: {e}", parent.display())))?;
        let fixed = agent::fix(docker, exe, parent.as_fd(), name, path, policy)?;
        for line in &fixed.problems {
            report(line);
        }
        fixed.walked.print(repair);
        all_ok &= fixed.walked.ok;
    }
    Ok(all_ok)
}

/// Gives what container ids `from` left under `paths` back to `owner`: the `fix` strategy's
/// repair after a run. Sources that are not folders of the owner's (a socket, a system
/// folder) are left alone.
pub fn repair(cli: &Cli, paths: &[PathBuf], owner: Owner, from: (u32, u32)) -> Result<bool> {
    if (owner.uid, owner.gid) == from {
        return Ok(true);
    }
    let is_root = rustix::process::geteuid().is_root();
    let mine: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir() && (is_root || check_may_fix(p, owner, owner.uid).is_ok()))
        .cloned()
        .collect();
    if mine.is_empty() {
        return Ok(true);
    }
    let args = FixArgs {
        owner: Some(owner.to_string()),
        from: Some(format!("{}:{}", from.0, from.1)),
        all: false,
        dry_run: false,
        cross_mounts: false,
        follow_hardlinks: false,
        expect: Vec::new(),
        repair: true,
        paths: mine,
    };
    main(cli, &args)
}

/// Completes the repairs that earlier `fix` strategy runs promised but never made (asme was
/// killed outright). Problems are reported; the entry stays for the next try.
pub fn complete_pending(cli: &Cli, dir: &Path) {
    for (file, pending) in journal::orphaned(dir) {
        eprintln!(
            "asme: completing the repair of an earlier run that was killed (pid {})",
            pending.pid
        );
        let parse = |s: &str| {
            s.parse::<crate::owner::OwnerSpec>()
                .ok()
                .map(|o| (o.uid, o.gid.unwrap_or(o.uid)))
        };
        let (Some(owner), Some(from)) = (parse(&pending.owner), parse(&pending.from)) else {
            let _ = std::fs::remove_file(&file);
            continue;
        };
        let owner = Owner {
            uid: owner.0,
            gid: owner.1,
        };
        match repair(cli, &pending.paths, owner, from) {
            Ok(_) => {
                let _ = std::fs::remove_file(&file);
            }
            Err(e) => eprintln!("asme: that repair failed again: {e:#}"),
        }
    }
}

/// An ordinary user may fix only their own trees (the folder or the folder holding it is
/// theirs) and only for themselves: asme must not become a way to take root's files.
fn check_may_fix(path: &Path, owner: Owner, me: u32) -> Result<()> {
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

fn owner_spec(spec: &str, cli: &Cli) -> Result<Owner> {
    let spec: crate::owner::OwnerSpec = spec.parse()?;
    Ok(crate::run::invoking_owner(&Cli {
        owner: Some(spec),
        ..cli.clone()
    }))
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
    cli: &Cli,
    args: &FixArgs,
    paths: &[PathBuf],
    policies: &[Policy],
) -> Result<bool> {
    let docker = Docker::detect()?;
    let exe = std::env::current_exe().context("finding the asme binary")?;
    let image = docker.self_image(&exe)?;
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
    for path in paths {
        argv.push("--mount".into());
        argv.push(mounts::bind_mount(path, path, Access::ReadWrite));
        let (dev, ino) = identity(path)?;
        expect.push(format!("{dev}:{ino}"));
    }
    argv.push(image);
    argv.push("fix".into());
    // Every tree gets the same owner here: a user can only fix for themselves.
    let owner = policies
        .first()
        .map(|p| p.owner)
        .expect("at least one path");
    argv.push(format!("--owner={owner}"));
    if let Some(from) = &args.from {
        argv.push(format!("--from={from}"));
    }
    for (flag, on) in [
        ("--repair", args.repair),
        ("--all", args.all),
        ("--dry-run", args.dry_run),
        ("--cross-mounts", args.cross_mounts),
        ("--follow-hardlinks", args.follow_hardlinks),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    argv.push(format!("--expect={}", expect.join(",")));
    argv.push("--".into());
    argv.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
    if cli.verbose {
        eprintln!("asme: docker {}", argv.join(" "));
    }
    let status = docker.status(&argv)?;
    Ok(status == 0)
}

/// Walks one tree in this process (asme must be root to change anything), after checking that
/// its top is the folder `expect`ed, when given. Returns whether it went without error.
pub fn fix_here(
    path: &Path,
    policy: &Policy,
    expect: Option<(u64, u64)>,
    repair: bool,
) -> Result<bool> {
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
    let walked = walk_tree(top, path, policy, &report, progress)?;
    walked.print(repair);
    Ok(walked.ok)
}

/// Walks one opened tree, its problems to `report` (and a progress line on stderr if
/// `progress`); returns the summary line and whether the walk went without error.
pub fn walk_tree(
    top: OwnedFd,
    path: &Path,
    policy: &Policy,
    report: &Reporter<'_>,
    progress: bool,
) -> Result<Walked> {
    let tally = Tally::default();
    let started = Instant::now();
    let done = AtomicBool::new(false);
    std::thread::scope(|threads| -> Result<()> {
        if progress {
            threads.spawn(|| show_progress(&tally, &done));
        }
        let result = Walk::run(policy, &tally, report, top, path)
            .with_context(|| format!("walking {}", path.display()));
        done.store(true, Ordering::Relaxed);
        result
    })?;
    report_clear();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Ok(Walked {
        summary: summary(&tally, policy, started.elapsed()),
        ok: load(&tally.errors) == 0,
        eventful: load(&tally.changed) + load(&tally.hard_linked) + load(&tally.other_filesystem)
            > 0,
    })
}

/// What a walk tells its caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Walked {
    /// The one-line summary.
    pub summary: String,
    /// No entry failed.
    pub ok: bool,
    /// Something was changed or skipped: worth telling even after a quiet run.
    pub eventful: bool,
}

impl Walked {
    /// Prints the summary: on stdout for `asme fix`; after a run (`repair`) on stderr, and only
    /// when there is news, so the command's own output stays as it was.
    pub fn print(&self, repair: bool) {
        if !repair {
            println!("{}", self.summary);
        } else if self.eventful || !self.ok {
            eprintln!("{}", self.summary);
        }
    }
}

/// Redraws one progress line on the terminal (stderr) until `done`. Display only: nothing
/// waits on it.
fn show_progress(tally: &Tally, done: &AtomicBool) {
    let tick = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        // Small trees finish before a bar would be worth drawing.
        if waited < Duration::from_millis(500) || done.load(Ordering::Relaxed) {
            continue;
        }
        let entries = tally.entries.load(Ordering::Relaxed);
        let changed = tally.changed.load(Ordering::Relaxed);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Kasme fix: {entries} entries seen, {changed} changed"
        );
        PROGRESS_SHOWN.store(true, Ordering::Relaxed);
    }
}

fn summary(tally: &Tally, policy: &Policy, elapsed: Duration) -> String {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let skipped = load(&tally.hard_linked) + load(&tally.other_filesystem);
    let mut line = format!(
        "asme fix: {} entries: {} {}, {} already fine, {} skipped",
        load(&tally.entries),
        load(&tally.changed),
        if policy.dry_run {
            "would change"
        } else {
            "changed"
        },
        load(&tally.fine),
        skipped,
    );
    if skipped > 0 {
        line += &format!(
            " ({} hard-linked, {} on other filesystems)",
            load(&tally.hard_linked),
            load(&tally.other_filesystem)
        );
    }
    if load(&tally.errors) > 0 {
        line += &format!(", {} errors", load(&tally.errors));
    }
    line += &format!(" in {:.2} s", elapsed.as_secs_f64());
    line
}

fn report_clear() {
    if PROGRESS_SHOWN.swap(false, Ordering::Relaxed) {
        eprint!("\r\x1b[K");
    }
}

/// The top folder's identity, to check that the folder mounted into a container is the one
/// the caller meant.
pub fn identity(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a folder", path.display());
    }
    Ok((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(kind: FileType, uid: u32, gid: u32, nlink: u64) -> Inode {
        Inode {
            dev: 1,
            ino: 2,
            kind,
            uid,
            gid,
            nlink,
        }
    }

    #[test]
    fn policy_table() {
        use FileType::*;
        let owner = Owner {
            uid: 1000,
            gid: 100,
        };
        let policy = |scope, hard_links| Policy {
            owner,
            scope,
            hard_links,
            cross_mounts: false,
            dry_run: false,
        };
        let root = policy(Scope::ROOT, HardLinks::Skip);
        let all = policy(Scope::All, HardLinks::Skip);
        let follow = policy(Scope::ROOT, HardLinks::Follow);
        let app = policy(
            Scope::OwnedBy {
                uid: 1001,
                gid: 1001,
            },
            HardLinks::Skip,
        );
        let chown = |uid, gid| Action::Chown { uid, gid };
        let cases: &[(&Policy, Inode, Action)] = &[
            (&root, inode(RegularFile, 0, 0, 1), chown(1000, 100)),
            (&root, inode(Directory, 0, 0, 5), chown(1000, 100)),
            (&root, inode(Symlink, 0, 0, 1), chown(1000, 100)),
            (&root, inode(Fifo, 0, 0, 1), chown(1000, 100)),
            (&root, inode(RegularFile, 0, 50, 1), chown(1000, 50)),
            (&root, inode(RegularFile, 7, 0, 1), chown(7, 100)),
            (&root, inode(RegularFile, 1000, 100, 1), Action::Fine),
            (&root, inode(RegularFile, 7, 8, 1), Action::Fine),
            (
                &root,
                inode(RegularFile, 0, 0, 2),
                Action::Skip(Skip::HardLinked(2)),
            ),
            // A folder's link count is its subfolders, not hard links.
            (&root, inode(Directory, 0, 0, 2), chown(1000, 100)),
            (&follow, inode(RegularFile, 0, 0, 3), chown(1000, 100)),
            (&all, inode(RegularFile, 7, 8, 1), chown(1000, 100)),
            (&all, inode(RegularFile, 1000, 100, 1), Action::Fine),
            (
                &all,
                inode(RegularFile, 7, 8, 2),
                Action::Skip(Skip::HardLinked(2)),
            ),
            (&app, inode(RegularFile, 1001, 1001, 1), chown(1000, 100)),
            (&app, inode(RegularFile, 0, 0, 1), Action::Fine),
        ];
        for (policy, inode, want) in cases {
            assert_eq!(decide(policy, inode), *want, "{:?} {inode:?}", policy.scope);
        }
    }
}

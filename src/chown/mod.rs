//! The safe parallel chown walker and its policy: which entries of a tree change, to what,
//! and the summary of a walk. Used by `asme fix` (in this process, in a container, or in the
//! agent) and by the `fix` strategy's repair; where the walk runs is `fix`'s business.
//!
//! The walk itself, and its guarantees against symlinks, hard links, swaps and other
//! filesystems, is `walk`.

pub mod walk;

use std::fmt;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::fs::FileType;

use crate::owner::Owner;
use crate::sys::fs::Inode;
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

/// Where a walk's summary line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryTo {
    /// `asme fix`: always, on stdout.
    Stdout,
    /// A repair after a run: on stderr, and only when there is news, so that the command's
    /// own output stays as it was.
    StderrWhenNews,
}

impl Walked {
    /// Prints the summary. A closed stdout (`asme fix ... | head -1`) is not an error: the
    /// work is done, and the reader has what it wanted.
    pub fn print(&self, to: SummaryTo) {
        match to {
            SummaryTo::Stdout => {
                let _ = writeln!(std::io::stdout(), "{}", self.summary);
            }
            SummaryTo::StderrWhenNews if self.eventful || !self.ok => {
                let _ = writeln!(std::io::stderr(), "{}", self.summary);
            }
            SummaryTo::StderrWhenNews => {}
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

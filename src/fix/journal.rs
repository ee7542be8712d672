//! Repairs promised but not yet done: the `fix` strategy writes one before `docker run` and
//! removes it after the repair, so that if asme is killed outright (SIGKILL) in between, the
//! next `asme run` or `asme fix` of the same user completes it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::cache::write_atomic;
use crate::owner::Owner;

/// One pending repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The asme process that promised it, and when that process started (a pid alone can be
    /// reused): while it lives, the repair is its business.
    pub pid: u32,
    pub started: u64,
    /// Whose the entries become, and whose they are given back from (the container's user).
    pub owner: Owner,
    pub from: Owner,
    pub paths: Vec<PathBuf>,
}

/// A written journal entry, removed by [`Entry::done`].
pub struct Entry {
    path: PathBuf,
}

impl Entry {
    /// Records `pending` in `dir` (the user's cache).
    pub fn write(dir: &Path, pending: &Pending) -> Result<Entry> {
        let path = dir.join(format!("{}-{}.json", pending.pid, pending.started));
        write_atomic(&path, &serde_json::to_vec(pending)?)?;
        Ok(Entry { path })
    }

    pub fn done(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Pending repairs left by asme processes that no longer run, with the files that hold them.
pub fn orphaned(dir: &Path) -> Vec<(PathBuf, Pending)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let pending: Pending = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
            (!is_running(pending.pid, pending.started)).then_some((p, pending))
        })
        .collect()
}

/// This process's pid and start time, for a new journal entry.
pub fn this_process() -> (u32, u64) {
    let pid = std::process::id();
    (pid, start_time(pid).unwrap_or(0))
}

fn is_running(pid: u32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_keeps_its_entry_a_dead_one_does_not() {
        let dir = std::env::temp_dir().join(format!("asme-journal-test-{}", std::process::id()));
        let (pid, started) = this_process();
        assert!(started > 0);
        let mine = Pending {
            pid,
            started,
            owner: Owner { uid: 1, gid: 1 },
            from: Owner { uid: 0, gid: 0 },
            paths: vec!["/x".into()],
        };
        let dead = Pending {
            started: started + 1,
            ..mine.clone()
        };
        let kept = Entry::write(&dir, &mine).unwrap();
        Entry::write(&dir, &dead).unwrap();
        let orphans = orphaned(&dir);
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].1, dead);
        kept.done();
        let _ = fs::remove_dir_all(&dir);
    }
}

//! The driver's state on disk: its volumes by name, and for each the mount IDs that hold it.
//!
//! dockerd restarts a plugin killed with SIGKILL, and re-enables it after its own restart,
//! while containers keep the mounts they were given; so what the driver knows must outlive
//! the process. Each change is written (temporary file, fsync, rename(2), fsync of the
//! folder) before the method that made it returns, and a change that cannot be written is
//! undone in memory too: memory and disk never disagree.
//!
//! References are counted by mount ID. dockerd sends Mount with a new ID at each container
//! start, one per container sharing a volume, and Unmount with the same ID after each exit;
//! the mapping is made at the first ID ([`MountAction::FirstMount`]) and torn down when the
//! last goes ([`UnmountAction::LastGone`]). dockerd's plugin client sends a request again
//! when the connection fails (moby `pkg/plugins/client.go`, `callWithRetry`), so a request
//! that was carried out by a plugin killed before it answered can come twice: each change
//! here is idempotent (Create with the same options, Mount of a known ID, Unmount of an ID
//! already gone, Remove of a volume already gone).
//!
//! Two files, because they need different care. `volumes.json` holds the volumes'
//! definitions: they must survive a power cut, so each change is synced to disk. `mounts.json`
//! holds the mount IDs, which change at every container start and stop: it is replaced
//! (rename(2)) but not synced, which is enough for a plugin that is killed (the page cache
//! outlives it) and keeps a Mount well under a millisecond. After a reboot no mount is left,
//! whatever the file says: it names the boot it was written in
//! (`/proc/sys/kernel/random/boot_id`), and one from another boot is ignored.
//!
//! The file records what should be mapped. The driver records a mount before making the
//! mapping (and takes it back if that fails), so after a restart it re-makes or checks the
//! mapping of every volume with an ID here. Making mappings is the driver's; this module
//! never touches a volume's folder.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::options::VolumeSpec;
use crate::owner::Owner;

/// The state file's name in the driver's state folder.
pub const STATE_FILE: &str = "volumes.json";

/// The mount IDs' file, beside it.
pub const MOUNTS_FILE: &str = "mounts.json";

/// The layout of the state file, bumped when its meaning changes.
const FORMAT: u32 = 1;

/// A volume the driver made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub spec: VolumeSpec,
    /// Whose the files become, resolved when the volume was made.
    pub owner: Owner,
    /// When the volume was made, in seconds since the Unix epoch.
    pub created_at: u64,
    /// The mount IDs dockerd holds it with; empty when no container uses it. Kept in
    /// [`MOUNTS_FILE`] (read here too from a state written before there was one).
    #[serde(default, skip_serializing)]
    pub mounts: BTreeSet<String>,
}

impl Volume {
    pub fn is_mounted(&self) -> bool {
        !self.mounts.is_empty()
    }
}

/// What a Mount asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountAction {
    /// The volume had no mount ID: make the mapping.
    FirstMount,
    /// The mapping is already there for another ID (or for this one, sent again).
    AlreadyMounted,
}

/// What an Unmount asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountAction {
    /// That was the last ID: tear the mapping down.
    LastGone,
    /// Other IDs still hold the volume: keep the mapping.
    StillUsed,
    /// The ID held nothing (an Unmount sent again after it was carried out): nothing
    /// changed, and the request succeeds. An error would only make dockerd log a failure
    /// for a container that is stopped either way.
    NotMounted,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the volume driver's state {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the volume driver's state {} is corrupt (move it away to start with no volumes)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the volume driver's state {} has format {found}, and this asme reads format {FORMAT} \
         (was it written by another asme version?)",
        path.display()
    )]
    Format { path: PathBuf, found: u32 },
    #[error("writing the volume driver's state {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("volume '{0}' not found")]
    NotFound(String),
    #[error(
        "volume '{name}' is in use by {count} container mount(s): stop the containers using it \
         first"
    )]
    InUse { name: String, count: usize },
    #[error("volume '{0}' already exists with other options: remove it first or pick another name")]
    Conflict(String),
    #[error(
        "invalid volume name '{0}': use letters, digits, '_', '.' and '-', starting with a \
         letter or digit"
    )]
    BadName(String),
}

/// The state file as written.
#[derive(Serialize, Deserialize)]
struct Stored<V> {
    format: u32,
    volumes: V,
}

/// The mount IDs' file as written: the boot it belongs to, and the IDs by volume.
#[derive(Serialize, Deserialize)]
struct StoredMounts {
    boot: String,
    mounts: BTreeMap<String, BTreeSet<String>>,
}

/// The driver's volumes, as on disk in `dir`.
///
/// One `State` per folder, held by one [`SharedState`] or otherwise under one lock per
/// request: a request reads and changes it as a whole.
#[derive(Debug)]
pub struct State {
    dir: PathBuf,
    volumes: BTreeMap<String, Volume>,
}

impl State {
    /// Reads the state kept in `dir`; no state file (a first start) is no volume.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not a state file, or has another format; the message
    /// names the file.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = dir.join(STATE_FILE);
        let volumes = match fs::read(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(StateError::Read { path, source }),
            Ok(bytes) => {
                let stored: Stored<BTreeMap<String, Volume>> = serde_json::from_slice(&bytes)
                    .map_err(|source| StateError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if stored.format != FORMAT {
                    return Err(StateError::Format {
                        path,
                        found: stored.format,
                    });
                }
                stored.volumes
            }
        };
        let mut state = State {
            dir: dir.to_path_buf(),
            volumes,
        };
        state.load_mounts();
        Ok(state)
    }

    /// Takes the mount IDs from [`MOUNTS_FILE`] if it was written in this boot. A missing
    /// or unreadable file is no mount: the next Mount makes the mapping again, or finds it.
    fn load_mounts(&mut self) {
        let Ok(bytes) = fs::read(self.dir.join(MOUNTS_FILE)) else {
            return;
        };
        let Ok(stored) = serde_json::from_slice::<StoredMounts>(&bytes) else {
            return;
        };
        let boot = boot_id();
        for (name, volume) in &mut self.volumes {
            volume.mounts = match stored.mounts.get(name) {
                Some(ids) if stored.boot == boot && !boot.is_empty() => ids.clone(),
                _ => BTreeSet::new(),
            };
        }
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Option<&Volume> {
        self.volumes.get(name)
    }

    /// Every volume, by name in order.
    pub fn list(&self) -> impl Iterator<Item = (&str, &Volume)> {
        self.volumes.iter().map(|(name, v)| (name.as_str(), v))
    }

    /// Records a new volume owned by `owner` (see `options::resolve_owner`). The same
    /// options again for an existing name is no change.
    ///
    /// # Errors
    ///
    /// A name dockerd would not make, a name taken with other options, or the state
    /// cannot be written.
    pub fn create(&mut self, name: &str, spec: VolumeSpec, owner: Owner) -> Result<(), StateError> {
        check_name(name)?;
        self.change(|volumes| match volumes.get(name) {
            Some(existing) if existing.spec == spec => Ok(()),
            Some(_) => Err(StateError::Conflict(name.to_string())),
            None => {
                volumes.insert(
                    name.to_string(),
                    Volume {
                        spec,
                        owner,
                        created_at: now(),
                        mounts: BTreeSet::new(),
                    },
                );
                Ok(())
            }
        })
    }

    /// Forgets a volume, returning what it was (`None`: it was already gone). The folder
    /// and its files are the user's and stay as they are.
    ///
    /// # Errors
    ///
    /// The volume is mounted, or the state cannot be written.
    pub fn remove(&mut self, name: &str) -> Result<Option<Volume>, StateError> {
        self.change(|volumes| match volumes.get(name) {
            Some(v) if v.is_mounted() => Err(StateError::InUse {
                name: name.to_string(),
                count: v.mounts.len(),
            }),
            _ => Ok(volumes.remove(name)),
        })
    }

    /// Records that mount `id` holds `name`.
    ///
    /// # Errors
    ///
    /// No such volume, or the state cannot be written.
    pub fn mount(&mut self, name: &str, id: &str) -> Result<MountAction, StateError> {
        self.change(|volumes| {
            let volume = volumes
                .get_mut(name)
                .ok_or_else(|| StateError::NotFound(name.to_string()))?;
            let first = volume.mounts.is_empty();
            volume.mounts.insert(id.to_string());
            Ok(if first {
                MountAction::FirstMount
            } else {
                MountAction::AlreadyMounted
            })
        })
    }

    /// Records that mount `id` no longer holds `name`.
    ///
    /// # Errors
    ///
    /// No such volume, or the state cannot be written.
    pub fn unmount(&mut self, name: &str, id: &str) -> Result<UnmountAction, StateError> {
        self.change(|volumes| {
            let volume = volumes
                .get_mut(name)
                .ok_or_else(|| StateError::NotFound(name.to_string()))?;
            Ok(if !volume.mounts.remove(id) {
                UnmountAction::NotMounted
            } else if volume.mounts.is_empty() {
                UnmountAction::LastGone
            } else {
                UnmountAction::StillUsed
            })
        })
    }

    /// Writes the state file whole, replacing the old one in one step.
    ///
    /// `cache::write_atomic` is not used: its 0644 would let every host user read which
    /// folders are mapped to whom (this file is root's: 0600, in a 0700 folder); it does
    /// not fsync, and after a power cut a renamed file may be empty (ext4 `auto_da_alloc`
    /// is a heuristic; XFS has none), which here would lose every volume; and its
    /// temporary name is per process, so it is not for concurrent writers, which the
    /// server's threads are not only because they share one `State` under one lock.
    ///
    /// # Errors
    ///
    /// The folder or file cannot be made, written or synced.
    pub fn save(&self) -> Result<(), StateError> {
        let path = self.path();
        let text = serde_json::to_vec_pretty(&Stored {
            format: FORMAT,
            volumes: &self.volumes,
        })
        .expect("volumes serialise");
        write_replacing(&self.dir, &path, &text, Sync::ToDisk)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Writes the mount IDs' file whole, replacing the old one in one step; not synced.
    fn save_mounts(&self) -> Result<(), StateError> {
        let path = self.dir.join(MOUNTS_FILE);
        let stored = StoredMounts {
            boot: boot_id(),
            mounts: self
                .volumes
                .iter()
                .filter(|(_, v)| v.is_mounted())
                .map(|(name, v)| (name.clone(), v.mounts.clone()))
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&stored).expect("mounts serialise");
        write_replacing(&self.dir, &path, &text, Sync::No)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Applies `edit` to the volumes and writes them if it changed anything; on any error
    /// the volumes are as before.
    fn change<T>(
        &mut self,
        edit: impl FnOnce(&mut BTreeMap<String, Volume>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let before = self.volumes.clone();
        let result = edit(&mut self.volumes).and_then(|value| {
            if !same_definitions(&self.volumes, &before) {
                self.save()?;
            }
            let ids = |volumes: &BTreeMap<String, Volume>| {
                volumes
                    .iter()
                    .map(|(name, v)| (name.clone(), v.mounts.clone()))
                    .collect::<Vec<_>>()
            };
            if ids(&self.volumes) != ids(&before) {
                self.save_mounts()?;
            }
            Ok(value)
        });
        if result.is_err() {
            self.volumes = before;
        }
        result
    }
}

/// The volumes' definitions, mount IDs aside.
fn same_definitions(a: &BTreeMap<String, Volume>, b: &BTreeMap<String, Volume>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, va), (nb, vb))| {
            na == nb && va.spec == vb.spec && va.owner == vb.owner && va.created_at == vb.created_at
        })
}

/// Whether a replaced file must be on disk before the write returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    ToDisk,
    No,
}

/// This boot's id: mounts do not outlive it.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_string())
        .unwrap_or_default()
}

/// Temporary file beside `path`, rename over `path`; with [`Sync::ToDisk`] the file is
/// synced before the rename and `dir` after it (so the rename itself is on disk). The
/// temporary name is fixed: a file a killed writer left there is removed, and the new one
/// is made with O_EXCL, so nothing put at that name is written through.
fn write_replacing(dir: &Path, path: &Path, content: &[u8], sync: Sync) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!("{name}.tmp"));
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(content)?;
    if sync == Sync::ToDisk {
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if sync == Sync::ToDisk {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Docker's own rule for volume names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, moby
/// `daemon/names`), which anonymous volumes (64 hex digits) follow too. The driver uses the
/// name in paths under its mount folder, so a `/` or `..` must never get through.
fn check_name(name: &str) -> Result<(), StateError> {
    let mut bytes = name.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadName(name.to_string()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A [`State`] shared by the server's threads: one lock per request.
#[derive(Debug)]
pub struct SharedState {
    state: Mutex<State>,
}

impl SharedState {
    pub fn new(state: State) -> SharedState {
        SharedState {
            state: Mutex::new(state),
        }
    }

    /// The state, for one request. A request that panicked while holding it may have left
    /// memory half-changed, so the state is then read again from disk, which holds only
    /// whole changes.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                if let Ok(fresh) = State::load(&guard.dir) {
                    *guard = fresh;
                }
                self.state.clear_poison();
                guard
            }
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

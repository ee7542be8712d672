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
    /// The mount IDs dockerd holds it with; empty when no container uses it.
    #[serde(default)]
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
        Ok(State {
            dir: dir.to_path_buf(),
            volumes,
        })
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
        write_synced(&self.dir, &path, &text).map_err(|source| StateError::Write { path, source })
    }

    /// Applies `edit` to the volumes and writes them if it changed anything; on any error
    /// the volumes are as before.
    fn change<T>(
        &mut self,
        edit: impl FnOnce(&mut BTreeMap<String, Volume>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let before = self.volumes.clone();
        let result = edit(&mut self.volumes).and_then(|value| {
            if self.volumes != before {
                self.save()?;
            }
            Ok(value)
        });
        if result.is_err() {
            self.volumes = before;
        }
        result
    }
}

/// Temporary file beside `path`, fsync, rename over `path`, fsync of `dir` (so the rename
/// itself is on disk). The temporary name is fixed: a file a killed writer left there is
/// removed, and the new one is made with O_EXCL, so nothing put at that name is written
/// through.
fn write_synced(dir: &Path, path: &Path, content: &[u8]) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
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
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
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
mod tests {
    use super::*;
    use crate::plugin::options::Access;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    /// A fresh folder under the system's temporary folder, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "asme-plugin-state-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const OWNER: Owner = Owner {
        uid: 1234,
        gid: 1234,
    };

    fn with_volume(tag: &str) -> (TempDir, State) {
        let dir = TempDir::new(tag);
        let mut state = State::load(&dir.0).unwrap();
        state
            .create("vol", VolumeSpec::new("/home/a/src"), OWNER)
            .unwrap();
        (dir, state)
    }

    /// One request of a reference-count sequence and the action it must yield.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Mount(&'static str, MountAction),
        Unmount(&'static str, UnmountAction),
    }

    #[test]
    fn mounts_are_counted_by_id() {
        use MountAction::*;
        use Step::*;
        use UnmountAction::*;
        let cases: &[(&str, &[Step])] = &[
            (
                "two containers share a volume",
                &[
                    Mount("a", FirstMount),
                    Mount("b", AlreadyMounted),
                    Unmount("a", StillUsed),
                    Unmount("b", LastGone),
                ],
            ),
            (
                "each docker start brings a new ID",
                &[
                    Mount("start-1", FirstMount),
                    Unmount("start-1", LastGone),
                    Mount("start-2", FirstMount),
                    Unmount("start-2", LastGone),
                ],
            ),
            (
                "a request sent again changes nothing",
                &[
                    Mount("a", FirstMount),
                    Mount("a", AlreadyMounted),
                    Unmount("a", LastGone),
                    Unmount("a", NotMounted),
                ],
            ),
            (
                "an unknown ID never releases another's mount",
                &[
                    Unmount("zz", NotMounted),
                    Mount("b", FirstMount),
                    Unmount("zz", NotMounted),
                    Unmount("b", LastGone),
                ],
            ),
        ];
        for (what, steps) in cases {
            let (dir, mut state) = with_volume("count");
            for (i, step) in steps.iter().enumerate() {
                let at = format!("{what}, step {i} {step:?}");
                match *step {
                    Mount(id, want) => assert_eq!(state.mount("vol", id).unwrap(), want, "{at}"),
                    Unmount(id, want) => {
                        assert_eq!(state.unmount("vol", id).unwrap(), want, "{at}")
                    }
                }
                // What is on disk is what is in memory after every step.
                let saved = State::load(&dir.0).unwrap();
                assert_eq!(saved.get("vol"), state.get("vol"), "{at}");
            }
            assert!(!state.get("vol").unwrap().is_mounted(), "{what}");
        }
    }

    #[test]
    fn create_and_remove_sent_again_change_nothing() {
        let (dir, mut state) = with_volume("again");
        let created_at = state.get("vol").unwrap().created_at;
        state
            .create("vol", VolumeSpec::new("/home/a/src"), OWNER)
            .unwrap();
        assert_eq!(state.get("vol").unwrap().created_at, created_at);
        assert!(state.remove("vol").unwrap().is_some());
        assert_eq!(state.remove("vol").unwrap(), None);
        assert_eq!(State::load(&dir.0).unwrap().list().count(), 0);
    }

    #[test]
    fn unknown_volumes_are_errors_for_mount_and_unmount() {
        let (_dir, mut state) = with_volume("unknown");
        for result in [
            state.mount("nope", "a").map(|_| ()),
            state.unmount("nope", "a").map(|_| ()),
        ] {
            let err = result.unwrap_err();
            assert!(matches!(err, StateError::NotFound(_)));
            assert_eq!(err.to_string(), "volume 'nope' not found");
        }
    }

    #[test]
    fn remove_while_mounted_is_refused_and_keeps_the_volume() {
        let (dir, mut state) = with_volume("busy");
        state.mount("vol", "a").unwrap();
        state.mount("vol", "b").unwrap();
        let err = state.remove("vol").unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume 'vol' is in use by 2 container mount(s): stop the containers using it first"
        );
        assert!(state.get("vol").is_some());
        assert!(State::load(&dir.0).unwrap().get("vol").is_some());
        state.unmount("vol", "a").unwrap();
        state.unmount("vol", "b").unwrap();
        let removed = state.remove("vol").unwrap().unwrap();
        assert_eq!(removed.spec.source, Path::new("/home/a/src"));
    }

    #[test]
    fn create_refuses_other_options_and_bad_names() {
        let (_dir, mut state) = with_volume("create");
        let err = state
            .create("vol", VolumeSpec::new("/other"), OWNER)
            .unwrap_err();
        assert!(matches!(err, StateError::Conflict(_)), "{err}");
        assert_eq!(
            state.get("vol").unwrap().spec.source,
            Path::new("/home/a/src")
        );
        let cases: &[(&str, bool)] = &[
            ("v", true),
            ("my-vol_1.2", true),
            (
                "b87d7442095999a92b65b3d9691e697b61713829cc0ffd1bb72e4ccd51aa4d6c",
                true,
            ),
            ("", false),
            (".", false),
            ("..", false),
            ("-v", false),
            ("_v", false),
            ("a/b", false),
            ("a b", false),
            ("été", false),
        ];
        for (name, ok) in cases {
            let result = state.create(name, VolumeSpec::new("/s"), OWNER);
            assert_eq!(result.is_ok(), *ok, "{name:?}: {result:?}");
            if !ok {
                assert!(state.get(name).is_none());
            }
        }
    }

    #[test]
    fn state_survives_a_restart() {
        let (dir, mut state) = with_volume("persist");
        let ro = VolumeSpec {
            owner: Some(crate::owner::OwnerSpec {
                uid: 1234,
                gid: Some(55),
            }),
            uid: 1000,
            gid: 1000,
            access: Access::ReadOnly,
            ..VolumeSpec::new("/data")
        };
        state
            .create("ro", ro.clone(), Owner { uid: 1234, gid: 55 })
            .unwrap();
        state.mount("vol", "a").unwrap();
        state.mount("vol", "b").unwrap();
        let before: Vec<(String, Volume)> = state
            .list()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        drop(state);

        let again = State::load(&dir.0).unwrap();
        let after: Vec<(String, Volume)> = again
            .list()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        assert_eq!(after, before);
        assert_eq!(again.get("ro").unwrap().spec, ro);
        assert!(again.get("vol").unwrap().created_at > 1_600_000_000);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&again.path()), 0o600);
        assert_eq!(mode(&dir.0), 0o700);
        assert!(!dir.0.join(format!("{STATE_FILE}.tmp")).exists());
    }

    #[test]
    fn a_missing_state_is_empty_and_a_corrupt_one_an_error() {
        let dir = TempDir::new("corrupt");
        assert_eq!(State::load(&dir.0).unwrap().list().count(), 0);
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(STATE_FILE);
        for text in ["", "{", "[]", r#"{"format":1,"volumes":{"v":{"spec":{}}}}"#] {
            fs::write(&path, text).unwrap();
            let err = State::load(&dir.0).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{text:?}: {err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "the volume driver's state {} is corrupt (move it away to start with no \
                     volumes)",
                    path.display()
                )
            );
            let cause = std::error::Error::source(&err).unwrap().to_string();
            assert!(!cause.is_empty());
        }
        fs::write(&path, r#"{"format":2,"volumes":{}}"#).unwrap();
        let err = State::load(&dir.0).unwrap_err();
        assert!(matches!(err, StateError::Format { found: 2, .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn a_change_that_cannot_be_written_is_undone() {
        let (dir, mut state) = with_volume("unwritable");
        // The state folder becomes a file: every write fails, for root too.
        fs::remove_dir_all(&dir.0).unwrap();
        fs::write(&dir.0, "not a folder").unwrap();
        let err = state.mount("vol", "a").unwrap_err();
        assert!(matches!(err, StateError::Write { .. }), "{err}");
        assert!(!state.get("vol").unwrap().is_mounted());
        assert!(state.create("other", VolumeSpec::new("/o"), OWNER).is_err());
        assert!(state.get("other").is_none());
        // Changing nothing writes nothing, so it cannot fail.
        assert_eq!(
            state.unmount("vol", "a").unwrap(),
            UnmountAction::NotMounted
        );
        fs::remove_file(&dir.0).unwrap();
    }

    #[test]
    fn threads_share_one_state() {
        let (dir, state) = with_volume("threads");
        let shared = Arc::new(SharedState::new(state));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut firsts = 0;
                    for i in 0..10 {
                        let id = format!("{t}-{i}");
                        if shared.lock().mount("vol", &id).unwrap() == MountAction::FirstMount {
                            firsts += 1;
                        }
                    }
                    firsts
                })
            })
            .collect();
        let firsts: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(firsts, 1);
        assert_eq!(shared.lock().get("vol").unwrap().mounts.len(), 80);
        assert_eq!(
            State::load(&dir.0)
                .unwrap()
                .get("vol")
                .unwrap()
                .mounts
                .len(),
            80
        );
    }

    #[test]
    fn a_panicked_request_leaves_what_was_saved() {
        let (_dir, state) = with_volume("poison");
        let shared = Arc::new(SharedState::new(state));
        shared.lock().mount("vol", "a").unwrap();
        let poisoner = Arc::clone(&shared);
        let panicked = std::thread::spawn(move || {
            let mut guard = poisoner.lock();
            // Memory changed, never saved, then a panic.
            guard
                .volumes
                .get_mut("vol")
                .unwrap()
                .mounts
                .insert("half".into());
            panic!("request failed halfway");
        })
        .join();
        assert!(panicked.is_err());
        let state = shared.lock();
        assert_eq!(
            state.get("vol").unwrap().mounts,
            BTreeSet::from(["a".to_string()])
        );
    }
}

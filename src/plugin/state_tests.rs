//! Unit tests of `state`: counting, idempotence, durability, sharing.

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
    assert_eq!(mode(&dir.0.join(MOUNTS_FILE)), 0o600);
}

/// Mount and Unmount write only the mount IDs' file; the definitions' file stays as it was.
#[test]
fn mounts_leave_the_definitions_file_alone() {
    let (dir, mut state) = with_volume("split");
    let definitions = fs::read(state.path()).unwrap();
    state.mount("vol", "a").unwrap();
    let mounts = fs::read_to_string(dir.0.join(MOUNTS_FILE)).unwrap();
    assert!(mounts.contains("\"a\""), "{mounts}");
    assert_eq!(fs::read(state.path()).unwrap(), definitions);
    assert!(!String::from_utf8_lossy(&definitions).contains("\"a\""));
    state.unmount("vol", "a").unwrap();
    assert_eq!(fs::read(state.path()).unwrap(), definitions);
}

/// After a reboot no mount is left: IDs written in another boot, or an unreadable mount
/// file, leave every volume unmounted and every definition in place.
#[test]
fn mounts_of_another_boot_or_a_broken_file_are_none() {
    let (dir, mut state) = with_volume("boot");
    state.mount("vol", "a").unwrap();
    let path = dir.0.join(MOUNTS_FILE);
    let text = fs::read_to_string(&path).unwrap();
    let this_boot = boot_id();
    assert!(!this_boot.is_empty() && text.contains(&this_boot), "{text}");
    for written in [
        text.replace(&this_boot, "another-boot"),
        "{\"boot".to_string(),
    ] {
        fs::write(&path, written).unwrap();
        let again = State::load(&dir.0).unwrap();
        let vol = again.get("vol").unwrap();
        assert!(!vol.is_mounted());
        assert_eq!(vol.spec, VolumeSpec::new("/home/a/src"));
    }
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

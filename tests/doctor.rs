//! e2e: `asme doctor` on the real engine, run by an ordinary host user.

mod testenv;

use std::fs;
use std::sync::{Mutex, MutexGuard};

use testenv::{Run, TestDir, asme_as, docker, ok, user1234};

/// One doctor at a time: each checks that no doctor image exists once it is done.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Images the doctor left behind (it tags its throwaway image `asme-doctor:PID`).
fn doctor_images() -> String {
    ok(docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "asme-doctor",
    ]))
}

/// Doctor removed its image and its temp folders (in `dir`).
fn assert_nothing_left(dir: &std::path::Path) {
    assert_eq!(doctor_images().trim(), "", "the throwaway image was left");
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.iter()
            .all(|p| !p.to_string_lossy().contains(".asme-doctor")),
        "temp folders were left: {left:?}"
    );
}

#[test]
fn json_report_says_both_strategies_work_and_leaves_nothing() {
    let _lock = one_at_a_time();
    let user = user1234();
    let dir = TestDir::new(user, "doctor-json");
    let path = dir.path.to_str().unwrap();
    let run = Run::of(asme_as(user, &dir.path, &["doctor", "--json", path]));
    let explain = run.explain();
    let report: serde_json::Value = serde_json::from_str(&run.ok())
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e})\n{explain}"));

    assert_eq!(report["strategies"]["idmap"]["ok"], true, "{report:#}");
    assert_eq!(report["strategies"]["fuse"]["ok"], true, "{report:#}");
    assert_eq!(report["strategies"]["user"]["ok"], true, "{report:#}");
    assert_eq!(report["strategies"]["fix"]["ok"], true, "{report:#}");
    assert_eq!(report["auto"], "idmap", "{report:#}");
    assert_eq!(report["engine"]["kind"], "rootful", "{report:#}");
    assert!(report["engine"]["server"].is_string(), "{report:#}");
    assert!(
        report["kernel"].as_str().is_some_and(|k| !k.is_empty()),
        "{report:#}"
    );
    assert_eq!(report["path"]["path"], path, "{report:#}");
    assert_eq!(report["path"]["idmap"], true, "{report:#}");
    assert!(report["path"]["fs_type"].is_string(), "{report:#}");
    for key in ["device", "openable", "passthrough"] {
        assert!(report["fuse"][key].is_boolean(), "fuse.{key}: {report:#}");
    }
    let switch = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring");
    let io_uring = switch.is_ok_and(|v| v.trim() == "Y");
    assert_eq!(report["fuse"]["io_uring"], io_uring, "{report:#}");
    assert!(report["security"]["apparmor"].is_boolean(), "{report:#}");
    assert!(report["security"]["selinux"].is_string(), "{report:#}");
    assert!(report["security"]["seccomp"].is_boolean(), "{report:#}");
    assert!(report["plugin"].is_string(), "{report:#}");

    assert_nothing_left(&dir.path);
}

#[test]
fn table_names_the_auto_strategy() {
    let _lock = one_at_a_time();
    let user = user1234();
    let dir = TestDir::new(user, "doctor-table");
    // PATH defaults to the working folder.
    let out = ok(asme_as(user, &dir.path, &["doctor"]));
    for row in [
        "engine",
        "kernel",
        "path",
        "fuse",
        "plugin",
        "strategy idmap",
        "strategy fuse",
        "strategy user",
        "strategy fix",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(row)),
            "no {row} row:\n{out}"
        );
    }
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("auto:") && l.contains("idmap")),
        "{out}"
    );
    assert_nothing_left(&dir.path);
}

#[test]
fn no_engine_means_no_strategy_and_exit_1() {
    let user = user1234();
    let dir = TestDir::new(user, "doctor-noengine");
    let mut cmd = asme_as(user, &dir.path, &["doctor", "--json"]);
    cmd.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let run = Run::of(cmd);
    assert_eq!(run.code(), Some(1), "{}", run.explain());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        report["engine"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach the Docker engine")),
        "{report:#}"
    );
    assert_eq!(report["strategies"]["idmap"]["detail"], "no engine");
    assert_eq!(report["strategies"]["user"]["ok"], false);
    assert_eq!(report["auto"], "none");
}

#[test]
fn root_is_told_that_nothing_is_mapped() {
    let _one_at_a_time = one_at_a_time();
    let dir = TestDir::new(testenv::user1234(), "doctor-root");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .args(["doctor", "--json"])
        .arg(&dir.path);
    let report: serde_json::Value = serde_json::from_str(&ok(&mut cmd)).unwrap();
    assert_eq!(report["auto"], "keep", "{report:#}");
}

#[test]
fn on_a_source_that_refuses_idmap_auto_is_fuse() {
    let _lock = one_at_a_time();
    let user = user1234();
    let src = TestDir::new(user, "doctor-bindfs-src");
    let mnt = TestDir::new(user, "doctor-bindfs-mnt");
    ok(std::process::Command::new("bindfs")
        .args(["-o", "allow_other"])
        .arg(&src.path)
        .arg(&mnt.path));
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt.path);
    let path = mnt.path.to_str().unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&ok(asme_as(user, &mnt.path, &["doctor", "--json", path]))).unwrap();
    assert_eq!(report["strategies"]["idmap"]["ok"], false, "{report:#}");
    assert_eq!(report["strategies"]["fuse"]["ok"], true, "{report:#}");
    assert_eq!(report["auto"], "fuse", "{report:#}");
    assert_nothing_left(&mnt.path);
}

/// Run from a folder the user may not write (here `/`), doctor tries the strategies in asme's
/// cache instead, says so, and its verdict is what `asme run` does from there.
#[test]
fn from_a_folder_the_user_cannot_write_it_tests_elsewhere() {
    let _lock = one_at_a_time();
    let user = user1234();
    let root = std::path::Path::new("/");
    let run = Run::of(asme_as(user, root, &["doctor", "--json"]));
    let report: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e})\n{}", run.explain()));
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert_eq!(report["path"]["path"], "/", "{report:#}");
    let tested_in = report["path"]["tested_in"].as_str().unwrap_or_default();
    assert!(
        std::path::Path::new(tested_in).starts_with(&user.home),
        "{report:#}"
    );
    assert_eq!(report["strategies"]["idmap"]["ok"], true, "{report:#}");
    assert_eq!(report["auto"], "idmap", "{report:#}");
    let table = ok(asme_as(user, root, &["doctor"]));
    assert!(table.contains("not writable by you"), "{table}");
    // asme run from there does what doctor said.
    let dir = TestDir::new(user, "doctor-unwritable");
    let mount = format!("{}:/w", dir.path.display());
    let mut cmd = asme_as(user, root, &["-v", "run", "--rm", "-v", &mount]);
    cmd.args([testenv::image("busybox").as_str(), "touch", "/w/f"]);
    let run = Run::of(cmd);
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        run.stderr.contains("asme: strategy idmap:"),
        "{}",
        run.explain()
    );
    assert_nothing_left(std::path::Path::new(tested_in));
}

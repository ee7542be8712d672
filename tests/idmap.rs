//! e2e: `asme run` with the `idmap` strategy: kernel idmapped mounts made by the agent.

mod testenv;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use testenv::{
    ContainerName, Run, TestDir, User, as_user, asme_as, assert_all_owned, docker, image, ok,
    owners, user1000, user1234, users,
};

/// The tests share one agent; `agent_stop_removes_it` takes it away, so it runs alone.
static AGENT: RwLock<()> = RwLock::new(());

/// Held by every test that needs the agent (the harness started each test process with a
/// fresh one).
fn agent() -> RwLockReadGuard<'static, ()> {
    testenv::users();
    AGENT.read().unwrap_or_else(|e| e.into_inner())
}

/// For tests that check the agent's global state (no lease left): no other test runs.
fn agent_alone() -> RwLockWriteGuard<'static, ()> {
    drop(agent());
    AGENT.write().unwrap_or_else(|e| e.into_inner())
}

fn idmap_run(user: &User, dir: &Path, args: &[&str]) -> Run {
    let mut argv = vec!["--strategy", "idmap", "run", "--rm"];
    argv.extend_from_slice(args);
    Run::of(asme_as(user, dir, &argv))
}

/// Starts a long-lived idmap container (`-d`, `sleep 600`) with `mount`.
fn idmap_detached(user: &User, dir: &Path, name: &ContainerName, mount: &str) {
    let argv = [
        "--strategy",
        "idmap",
        "run",
        "-d",
        "--name",
        &name.0,
        "-v",
        mount,
    ];
    let mut cmd = asme_as(user, dir, &argv);
    cmd.args([image("busybox").as_str(), "sleep", "600"]);
    ok(cmd);
}

const WRITE_EVERYTHING: &str = "set -e; cd /w; mkdir -p a/b; echo x > a/b/f; touch top; \
    ln -s top link; ln top hard; mkfifo fifo; cp top copy; mv copy moved; chmod 600 moved; \
    touch owned-by-root; chown root:root owned-by-root; chown -h 0:0 link; chown -R 0:0 a; \
    mkdir renamed-dir; mv renamed-dir dir2; echo done";

#[test]
fn a_root_container_writes_as_the_owner() {
    let _agent = agent();
    for user in users() {
        let dir = TestDir::new(user, "idmap-root");
        let mount = format!("{}:/w", dir.path.display());
        let run = idmap_run(
            user,
            &dir.path,
            &[
                "-v",
                &mount,
                &image("busybox"),
                "sh",
                "-c",
                &format!("id -u; {WRITE_EVERYTHING}"),
            ],
        );
        assert_eq!(run.ok(), "0\ndone\n");
        assert_all_owned(&dir.path, user, 10);
    }
}

#[test]
fn the_owners_files_appear_owned_by_the_container_user() {
    let _agent = agent();
    // git refuses a repository owned by someone else ("dubious ownership"): with idmap the
    // owner's repository is root's inside a root container, so git works without
    // safe.directory.
    let user = user1234();
    let dir = TestDir::new(user, "idmap-git");
    ok(as_user(user, &dir.path).args(["git", "init", "-q", "repo"]));
    let mount = format!("{}:/w", dir.path.display());
    let script = "stat -c '%u %g' /w/repo; git -C /w/repo status --short && echo git-ok";
    let out = idmap_run(
        user,
        &dir.path,
        &["-v", &mount, &image("debian"), "sh", "-c", script],
    )
    .ok();
    assert_eq!(out, "0 0\ngit-ok\n");
    // The same under plain docker: the repository is someone else's, so git refuses.
    let plain = Run::of(docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        &image("debian"),
        "sh",
        "-c",
        script,
    ]));
    assert!(
        plain.stderr.contains("dubious ownership"),
        "{}",
        plain.explain()
    );
}

#[test]
fn other_container_ids_keep_their_own_id() {
    let _agent = agent();
    // A daemon at 999 writes as 999 on disk, as under plain docker; host root's folders show
    // as 65534 (nobody) and cannot be written into, and asme says so.
    let user = user1000();
    let dir = TestDir::new(user, "idmap-999");
    fs::create_dir(dir.join("shared")).unwrap();
    fs::set_permissions(dir.join("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(dir.join("shared"), Some(user.uid), Some(user.gid)).unwrap();
    fs::create_dir(dir.join("rootdir")).unwrap();
    let mount = format!("{}:/w", dir.path.display());
    let script = "import os\nos.setgid(999); os.setuid(999)\nopen('/w/shared/daemon','w').close()\n\
                  print(os.stat('/w/rootdir').st_uid)\n\
                  try:\n    open('/w/rootdir/x','w')\nexcept PermissionError: print('refused')";
    let run = idmap_run(
        user,
        &dir.path,
        &["-v", &mount, &image("debian"), "python3", "-c", script],
    );
    assert!(
        run.stderr.contains("notice: ")
            && run.stderr.contains("rootdir")
            && run.stderr.contains("asme fix"),
        "{}",
        run.explain()
    );
    assert_eq!(run.ok(), "65534\nrefused\n");
    // A system folder is never suggested for `asme fix`: it is not the user's to take.
    let run = idmap_run(
        user,
        &dir.path,
        &["-v", "/etc:/x:ro", &image("busybox"), "true"],
    );
    assert!(run.stderr.contains("notice: "), "{}", run.explain());
    assert!(!run.stderr.contains("asme fix"), "{}", run.explain());
    run.ok();
    let meta = fs::metadata(dir.join("shared/daemon")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (999, 999));
}

#[test]
fn an_image_user_writes_as_the_owner() {
    let _agent = agent();
    // asme-test/user1000 runs as app (1000); the owner is 1234.
    let user = user1234();
    let dir = TestDir::new(user, "idmap-user1000");
    let mount = format!("{}:/w", dir.path.display());
    let out = idmap_run(
        user,
        &dir.path,
        &[
            "-v",
            &mount,
            &image("user1000"),
            "sh",
            "-c",
            "id -un; mkdir /w/d; touch /w/d/f; stat -c %u /w",
        ],
    )
    .ok();
    assert_eq!(out, "app\n1000\n");
    assert_all_owned(&dir.path, user, 2);
}

#[test]
fn docker_exec_gets_the_same_mapping() {
    let _alone = agent_alone();
    let user = user1000();
    let dir = TestDir::new(user, "idmap-exec");
    let name = ContainerName::new("idmap-exec");
    let mount = format!("{}:/w", dir.path.display());
    idmap_detached(user, &dir.path, &name, &mount);
    ok(as_user(user, &dir.path).args([
        "docker",
        "exec",
        &name.0,
        "sh",
        "-c",
        "mkdir /w/e; touch /w/e/f; chown 0 /w/e/f",
    ]));
    ok(as_user(user, &dir.path).args([
        "docker",
        "exec",
        "-u",
        "0:0",
        &name.0,
        "touch",
        "/w/as-root",
    ]));
    assert_all_owned(&dir.path, user, 3);
    // `-d` ended the `docker run` client: the host side of the lease is gone, the container
    // keeps its own mount.
    assert_no_leases();
    ok(as_user(user, &dir.path).args(["docker", "exec", &name.0, "touch", "/w/still-mounted"]));
    assert!(dir.join("still-mounted").exists());
}

#[test]
fn capabilities_are_exactly_plain_dockers() {
    let _agent = agent();
    let user = user1234();
    let dir = TestDir::new(user, "idmap-caps");
    let mount = format!("{}:/w", dir.path.display());
    let caps = "grep Cap /proc/self/status";
    let bb = image("busybox");
    for flags in [
        &[][..],
        &["--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN"],
        &["--user", "1000"],
    ] {
        let mut plain = vec!["run", "--rm", "-v", &mount];
        plain.extend_from_slice(flags);
        plain.extend_from_slice(&[&bb, "sh", "-c", caps]);
        let want = ok(as_user(user, &dir.path).arg("docker").args(&plain));
        let mut asme = vec!["--strategy", "idmap"];
        asme.extend_from_slice(&plain);
        assert_eq!(ok(asme_as(user, &dir.path, &asme)), want, "flags {flags:?}");
    }
    let name = ContainerName::new("idmap-caps");
    let plain_name = ContainerName::new("plain-caps");
    ok(as_user(user, &dir.path).args([
        "docker",
        "run",
        "-d",
        "--name",
        &plain_name.0,
        &image("busybox"),
        "sleep",
        "600",
    ]));
    idmap_detached(user, &dir.path, &name, &mount);
    let want = ok(docker(&["exec", &plain_name.0, "sh", "-c", caps]));
    assert_eq!(ok(docker(&["exec", &name.0, "sh", "-c", caps])), want);
}

#[test]
fn no_container_id_can_create_a_host_root_file() {
    let _agent = agent();
    let user = user1234();
    let dir = TestDir::new(user, "idmap-noroot");
    fs::create_dir(dir.join("open")).unwrap();
    fs::set_permissions(dir.join("open"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(dir.join("open"), Some(user.uid), Some(user.gid)).unwrap();
    let mount = format!("{}:/w", dir.path.display());
    // Every id a process can take here tries to leave a root-owned or setuid file behind.
    let attempt = "for f in /w/open/$(id -u)-a /w/$(id -u)-b; do touch $f; chown 0:0 $f; chmod 4755 $f; done; \
                   mkdir /w/open/$(id -u)-d; chown 0:0 /w/open/$(id -u)-d; cp -a /bin/busybox /w/open/$(id -u)-bin; \
                   chmod u+s /w/open/$(id -u)-bin; true";
    for as_id in [
        "0:0",
        "1234:1234",
        "1000:1000",
        "999:999",
        "65534:65534",
        "2147483647:2147483647",
    ] {
        let run = idmap_run(
            user,
            &dir.path,
            &[
                "--user",
                as_id,
                "-v",
                &mount,
                &image("busybox"),
                "sh",
                "-c",
                attempt,
            ],
        );
        assert_eq!(run.code(), Some(0), "{}", run.explain());
    }
    let root_owned: Vec<_> = owners(&dir.path)
        .into_iter()
        .filter(|(_, u, g)| *u == 0 || *g == 0)
        .collect();
    assert!(
        root_owned.is_empty(),
        "host-root-owned files: {root_owned:?}"
    );
    for (path, _, _) in owners(&dir.path) {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(
            meta.mode() & 0o4000 == 0 || meta.uid() != 0,
            "setuid root: {}",
            path.display()
        );
    }
}

#[test]
fn nested_read_only_and_non_bind_mounts() {
    let _agent = agent();
    let user = user1000();
    let outer = TestDir::new(user, "idmap-outer");
    let inner = TestDir::new(user, "idmap-inner");
    let ro = TestDir::new(user, "idmap-ro");
    let a = format!("{}:/w", outer.path.display());
    let b = format!("type=bind,src={},dst=/w/sub", inner.path.display());
    let c = format!("{}:/ro:ro", ro.path.display());
    let volume = format!("asme-e2e-vol-{}", std::process::id());
    let vol = format!("{volume}:/vol");
    let script = "touch /w/outer /w/sub/inner; touch /ro/x 2>/dev/null || echo ro-refused; \
                  touch /vol/v; stat -c %u /vol/v; touch /tmpfs/t && echo tmpfs-ok";
    let run = idmap_run(
        user,
        &outer.path,
        &[
            "-v",
            &a,
            "--mount",
            &b,
            "-v",
            &c,
            "-v",
            &vol,
            "--tmpfs",
            "/tmpfs",
            &image("busybox"),
            "sh",
            "-c",
            script,
        ],
    );
    let _ = docker(&["volume", "rm", &volume]).output();
    assert_eq!(run.ok(), "ro-refused\n0\ntmpfs-ok\n");
    assert_all_owned(&outer.path, user, 1);
    assert_all_owned(&inner.path, user, 1);
    assert!(owners(&ro.path).is_empty());
}

#[test]
fn a_missing_volume_source_is_created_as_the_owner() {
    let _agent = agent();
    let user = user1234();
    let dir = TestDir::new(user, "idmap-missing");
    let mount = format!("{}/new/deeper:/w", dir.path.display());
    idmap_run(
        user,
        &dir.path,
        &["-v", &mount, &image("busybox"), "touch", "/w/f"],
    )
    .ok();
    assert_all_owned(&dir.path, user, 3);
    // --mount refuses a missing source, as docker does.
    let mount = format!("type=bind,src={}/absent,dst=/w", dir.path.display());
    let run = idmap_run(
        user,
        &dir.path,
        &["--mount", &mount, &image("busybox"), "true"],
    );
    assert_eq!(run.code(), Some(125), "{}", run.explain());
    assert!(
        run.stderr.contains("bind source path does not exist"),
        "{}",
        run.explain()
    );
}

/// No lease is left on the host: no mount under the agent's leases folder, no folder there.
/// The agent releases a lease when it sees its client's connection close, so this polls with
/// a deadline first.
fn assert_no_leases() {
    let none_left = || {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let folders = fs::read_dir("/run/asme/leases").map_or(0, |d| d.count());
        !mounts.contains("/run/asme/leases/") && folders == 0
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !none_left() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains("/run/asme/leases/"),
        "lease mounts left:\n{mounts}"
    );
    let left: Vec<_> = fs::read_dir("/run/asme/leases")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "lease folders left: {left:?}");
}

#[test]
fn nothing_outlives_the_run() {
    let _alone = agent_alone();
    let user = user1000();
    let dir = TestDir::new(user, "idmap-cleanup");
    let mount = format!("{}:/w", dir.path.display());
    idmap_run(
        user,
        &dir.path,
        &["-v", &mount, &image("busybox"), "touch", "/w/f"],
    )
    .ok();
    // A client killed while its container runs: the agent notices the closed connection.
    let name = ContainerName::new("idmap-killed");
    let (child, _out) = testenv::spawn_until(
        asme_as(
            user,
            &dir.path,
            &[
                "--strategy",
                "idmap",
                "run",
                "--rm",
                "--name",
                &name.0,
                "-v",
                &mount,
                &image("busybox"),
                "sh",
                "-c",
                "echo up; sleep 600",
            ],
        ),
        "up",
    );
    testenv::kill_asme(child, &name);
    assert_no_leases();
}

#[test]
fn the_agent_answers_only_for_the_peers_own_ids() {
    let _agent = agent();
    let user = user1234();
    let dir = TestDir::new(user, "idmap-peer");
    let mount = format!("{}:/w", dir.path.display());
    // Asking for files owned by another uid is refused by the agent (SO_PEERCRED), in one line.
    let run = Run::of(asme_as(
        user,
        &dir.path,
        &[
            "--owner",
            "1000",
            "--strategy",
            "idmap",
            "run",
            "--rm",
            "-v",
            &mount,
            &image("busybox"),
            "true",
        ],
    ));
    assert_eq!(run.code(), Some(125), "{}", run.explain());
    assert!(
        run.stderr
            .contains("may not ask for files owned by uid 1000"),
        "{}",
        run.explain()
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.explain());
    // The socket is root:docker 0660: the same user without the docker group cannot connect.
    let meta = fs::metadata("/run/asme/agent.sock").unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o660));
    let connect = "import socket\ntry:\n socket.socket(socket.AF_UNIX).connect('/run/asme/agent.sock'); print('connected')\nexcept PermissionError: print('refused')";
    let mut outsider = Command::new("setpriv");
    outsider.args([
        "--reuid=1234",
        "--regid=1234",
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        connect,
    ]);
    assert_eq!(ok(&mut outsider), "refused\n");
    let mut member = Command::new("setpriv");
    member.args([
        "--reuid=1234",
        "--regid=1234",
        "--init-groups",
        "/usr/bin/python3",
        "-c",
        connect,
    ]);
    assert_eq!(ok(&mut member), "connected\n");
}

#[test]
fn an_idmap_less_source_falls_back_or_fails_cleanly() {
    let _alone = agent_alone();
    // A FUSE (bindfs) source refuses idmapped mounts.
    let user = user1000();
    let src = TestDir::new(user, "fuse-src");
    let mnt = TestDir::new(user, "fuse-mnt");
    ok(Command::new("bindfs").arg(&src.path).arg(&mnt.path));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt.path);
    let mount = format!("{}:/w", mnt.path.display());
    let name = ContainerName::new("fallback");
    // Explicit idmap: one clear line, exit 125, no container, no mount, no lease.
    let run = Run::of(asme_as(
        user,
        &mnt.path,
        &[
            "--strategy",
            "idmap",
            "run",
            "--rm",
            "--name",
            &name.0,
            "-v",
            &mount,
            &image("busybox"),
            "touch",
            "/w/f",
        ],
    ));
    assert_eq!(run.code(), Some(125), "{}", run.explain());
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.explain());
    assert!(run.stderr.contains("idmapped"), "{}", run.explain());
    assert!(
        docker(&["container", "inspect", &name.0])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    assert_no_leases();
    // auto: one notice line, then the fuse strategy (the container stays root), and the file
    // is still the owner's.
    let run = Run::of(asme_as(
        user,
        &mnt.path,
        &[
            "run",
            "--rm",
            "-v",
            &mount,
            &image("busybox"),
            "sh",
            "-c",
            "touch /w/f && id -u",
        ],
    ));
    run.assert_one_notice("using the fuse strategy");
    assert_eq!(run.ok().trim(), "0");
    assert_all_owned(&src.path, user, 1);
    let served = format!("fuse.asme {} ", mnt.path.display());
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&served)
    );
}

#[test]
fn agent_stop_removes_it() {
    let _alone = agent_alone();
    let user = user1000();
    let dir = TestDir::new(user, "agent-stop");
    let mount = format!("{}:/w", dir.path.display());
    idmap_run(user, &dir.path, &["-v", &mount, &image("busybox"), "true"]).ok();
    ok(asme_as(user, &dir.path, &["agent", "stop"]));
    assert!(
        !docker(&["container", "inspect", "asme-agent"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let images = ok(docker(&["images", "-q", "--filter", "label=asme.image=1"]));
    assert_eq!(images.trim(), "");
    // And it comes back on demand.
    idmap_run(
        user,
        &dir.path,
        &["-v", &mount, &image("busybox"), "touch", "/w/again"],
    )
    .ok();
    assert_all_owned(&dir.path, user, 1);
}

/// A container that `asme run` made is started again by docker alone (`docker start`, a
/// restart policy): its bind mounts are volumes of asme's driver, so it keeps writing into the
/// owner's folder as the owner, and no lease is left behind.
#[test]
fn a_container_started_again_by_docker_keeps_the_mapping() {
    let _alone = agent_alone();
    let user = user1234();
    let dir = TestDir::new(user, "idmap-restart");
    let name = ContainerName::new("idmap-restart");
    let mount = format!("{}:/w", dir.path.display());
    let mut cmd = asme_as(
        user,
        &dir.path,
        &[
            "--strategy",
            "idmap",
            "run",
            "--name",
            &name.0,
            "-v",
            &mount,
        ],
    );
    cmd.args([image("busybox").as_str(), "sh", "-c", "echo run >> /w/log"]);
    ok(cmd);
    assert_no_leases();
    let mut start = as_user(user, &dir.path);
    start.args(["docker", "start", "-a", &name.0]);
    Run::of(start).ok();
    assert_eq!(
        fs::read_to_string(dir.path.join("log")).unwrap(),
        "run\nrun\n"
    );
    let meta = fs::metadata(dir.path.join("log")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_no_leases();
    // Its volume goes with it.
    ok(docker(&["rm", "-v", &name.0]));
}

/// After an engine restart (or a reboot) the agent's container exists but is stopped. Many
/// runs at once, of two users, must start it once and all use it: none falls back to another
/// strategy, none fails, and no newly started agent takes a lease away from a live client.
#[test]
fn many_runs_start_a_stopped_agent_once() {
    let _alone = agent_alone();
    // Make sure the agent exists, then stop it as an engine restart would.
    let user = user1000();
    let warm = TestDir::new(user, "idmap-race-warm");
    let mount = format!("{}:/w", warm.path.display());
    idmap_run(user, &warm.path, &["-v", &mount, &image("busybox"), "true"]).ok();
    ok(docker(&["stop", "asme-agent"]));

    let runs: Vec<_> = std::thread::scope(|threads| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                threads.spawn(move || {
                    let user = &users()[i % 2];
                    let dir = TestDir::new(user, &format!("idmap-race-{i}"));
                    let mount = format!("{}:/w", dir.path.display());
                    let mut cmd = asme_as(user, &dir.path, &["run", "--rm", "-v", &mount]);
                    cmd.args([
                        image("busybox").as_str(),
                        "sh",
                        "-c",
                        "id -u; echo x > /w/f",
                    ]);
                    let run = Run::of(cmd);
                    (user, dir, run)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (user, dir, run) in &runs {
        assert_eq!(run.code(), Some(0), "{}", run.explain());
        assert!(
            !run.stderr.contains("notice"),
            "fell back: {}",
            run.explain()
        );
        assert_eq!(run.stdout, "0\n", "{}", run.explain());
        let meta = fs::metadata(dir.path.join("f")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid, user.gid),
            "{}",
            run.explain()
        );
    }
    assert_no_leases();
}

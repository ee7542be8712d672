//! e2e: a share the user mounted with FUSE and without `allow_other` (sshfs over loopback to an
//! sshd of the test's own), which neither the engine nor the agent may enter.
//!
//! Proves that where plain `docker run` cannot mount such a share (exit 125), `asme run` under
//! auto picks the fuse strategy, the container stays root, and its writes belong to the user.

mod testenv;

use std::fs;
use std::os::unix::fs::MetadataExt;

use testenv::share::{Share, fuse_mounts};
use testenv::{Run, as_user, asme_as, image, ok, user1234};

#[test]
fn a_share_the_engine_cannot_see_is_served_by_fuse() {
    let user = user1234();
    let share = Share::mount(user);
    let mount = format!("{}:/w", share.mountpoint.path.display());
    let busybox = image("busybox");

    // Plain docker: the engine (root) may not enter the user's FUSE mount.
    let mut plain = as_user(user, &user.home);
    plain.args(["docker", "run", "--rm", "-v", &mount, &busybox, "true"]);
    let run = Run::of(plain);
    assert_eq!(run.code(), Some(125), "{}", run.explain());

    // asme under auto: one notice, the fuse strategy, a root container, the user's file.
    let run = Run::of(asme_as(
        user,
        &user.home,
        &[
            "run",
            "--rm",
            "-v",
            &mount,
            &busybox,
            "sh",
            "-c",
            "echo hi > /w/out && id -u",
        ],
    ));
    run.assert_one_notice("using the fuse strategy");
    assert_eq!(run.ok().trim(), "0");
    share.assert_written_by(user);
    let served = format!("fuse.asme {} ", share.mountpoint.path.display());
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&served),
        "the fuse strategy left its mount of {}",
        share.mountpoint.path.display()
    );
}

/// The volume driver over the same kind of share: the plugin (root, in the engine's mount
/// namespace) may not enter it either, so it serves the volume with asme's FUSE mapping run
/// as the share's user. The share was mounted after the plugin started. What a root
/// container writes is the user's, and once the volume is unmounted nothing of it is left.
#[test]
fn a_share_the_engine_cannot_see_is_a_volume_of_the_driver() {
    let user = user1234();
    ok(asme_as(user, &user.home, &["plugin", "install"]));
    let share = Share::mount(user);
    let name = format!("asme-test-share-{}", std::process::id());
    let docker = |args: &[&str]| {
        let mut cmd = as_user(user, &user.home);
        cmd.arg("docker").args(args);
        Run::of(cmd)
    };
    let source = format!("source={}", share.mountpoint.path.display());
    docker(&["volume", "create", "-d", "asme", "-o", &source, &name]).ok();
    let mount = format!("{name}:/w");
    let busybox = image("busybox");
    let script = "echo hi > /w/out && id -u && stat -c %u:%g /w/out";
    let container = format!("asme-test-share-volume-{}", std::process::id());
    let started = docker(&[
        "run", "-d", "--name", &container, "-v", &mount, &busybox, "sleep", "600",
    ]);
    let mapping = docker(&["volume", "inspect", "-f", "{{.Status.Mapping}}", &name]);
    let run = docker(&["exec", &container, "sh", "-c", script]);
    let restarted = docker(&["restart", "-t", "0", &container]);
    let again = docker(&["exec", &container, "sh", "-c", script]);
    let _ = docker(&["rm", "-f", &container]);
    let removed = docker(&["volume", "rm", &name]);

    started.ok();
    assert_eq!(
        run.ok(),
        "0\n0:0\n",
        "root inside, and its file is root's there"
    );
    restarted.ok();
    assert_eq!(again.ok(), "0\n0:0\n", "after docker restart");
    let served_as = format!("fuse, served as {}:{}\n", user.uid, user.gid);
    assert_eq!(mapping.ok(), served_as);
    share.assert_written_by(user);
    removed.ok();
    let left: Vec<_> = fuse_mounts("fuse.asme")
        .into_iter()
        .filter(|m| m.ends_with(&name))
        .collect();
    assert!(left.is_empty(), "the driver left {left:?}");
}

/// `asme run` without `--rm` over the share: the container can be started again by docker
/// alone, so its bind mount becomes a volume of the driver (FUSE, served as the user), and
/// `docker start` keeps writing into the share as the user.
#[test]
fn a_container_over_a_share_started_again_by_docker_writes_as_the_user() {
    let user = user1234();
    let share = Share::mount(user);
    let mount = format!("{}:/w", share.mountpoint.path.display());
    let name = format!("asme-test-share-again-{}", std::process::id());
    let script = "echo run >> /w/log && id -u";
    let busybox = image("busybox");
    let run = Run::of(asme_as(
        user,
        &user.home,
        &[
            "run", "--name", &name, "-v", &mount, &busybox, "sh", "-c", script,
        ],
    ));
    let mut start = as_user(user, &user.home);
    start.args(["docker", "start", "-a", &name]);
    let again = Run::of(start);
    let mut remove = as_user(user, &user.home);
    remove.args(["docker", "rm", "-v", &name]);
    let removed = Run::of(remove);

    assert_eq!(run.ok(), "0\n");
    assert_eq!(again.ok(), "0\n", "started again by docker");
    removed.ok();
    let log = share.backing.join("log");
    assert_eq!(fs::read_to_string(&log).unwrap(), "run\nrun\n");
    let meta = fs::symlink_metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
}

/// Owners a container sets on a share whose filesystem keeps no `user.` attributes (sshfs
/// over OpenSSH's sftp-server): the fuse strategy records them in `.asme-owners` at the
/// share's root, which the container never sees, across a rename and into the next run;
/// on the host every file stays the user's.
#[test]
fn owners_a_container_sets_on_a_share_are_recorded_beside_it() {
    let user = user1234();
    let share = Share::mount(user);
    let mount = format!("{}:/w", share.mountpoint.path.display());
    let debian = image("debian");
    let run = |script: &str| {
        let args = ["--strategy", "fuse", "run", "--rm", "-v", &mount, &debian];
        Run::of(asme_as(
            user,
            &user.home,
            &[&args[..], &["sh", "-c", script]].concat(),
        ))
    };
    let set = "mkdir /w/d && chown -R 999:999 /w/d && chmod 700 /w/d && \
               setpriv --reuid=999 --regid=999 --clear-groups sh -c 'echo x > /w/d/f && mkdir \
               /w/d/sub' && mv /w/d /w/e && ls -A /w";
    assert_eq!(run(set).ok(), "e\n", "the sidecar is hidden");
    let seen = run("stat -c '%u:%g %a %n' /w/e /w/e/f /w/e/sub").ok();
    assert_eq!(
        seen,
        "999:999 700 /w/e\n999:999 644 /w/e/f\n999:999 755 /w/e/sub\n"
    );
    for entry in ["e", "e/f", "e/sub", ".asme-owners"] {
        let meta = fs::symlink_metadata(share.backing.join(entry)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{entry}");
    }
}

//! e2e: a share the user mounted with FUSE and without `allow_other` (sshfs over loopback to an
//! sshd of the test's own), which neither the engine nor the agent may enter.
//!
//! Proves that where plain `docker run` cannot mount such a share (exit 125), `asme run` under
//! auto picks the fuse strategy, the container stays root, and its writes belong to the user.

mod testenv;

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testenv::{Run, TestDir, User, as_user, asme_as, image, ok, user1234};

/// How long sshd may take to listen and sshfs to mount.
const STARTUP: Duration = Duration::from_secs(30);

/// Where the harness and this file keep their folders: `LABEL-PID-N`.
const E2E: &str = "/tmp/asme-e2e";

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

/// A folder of `user`'s (`backing`), served by an sshd of the test's own and mounted by `user`
/// at `mountpoint` with sshfs, without `allow_other`. Unmounted and stopped when dropped.
struct Share {
    // Dropped in this order, after `drop` has unmounted and reaped sshfs.
    mountpoint: TestDir,
    backing: TestDir,
    _key: TestDir,
    sshd: Sshd,
    sshfs: Child,
    log: PathBuf,
}

impl Share {
    /// `out` holds "hi" and is `user`'s: checked on the folder sshd serves, not through the
    /// user's mount (root may not enter it).
    fn assert_written_by(&self, user: &User) {
        let out = self.backing.join("out");
        let meta = fs::symlink_metadata(&out).unwrap();
        let owner = (meta.uid(), meta.gid());
        assert_eq!(owner, (user.uid, user.gid), "{}", out.display());
        assert_eq!(fs::read_to_string(&out).unwrap(), "hi\n");
    }

    fn mount(user: &User) -> Share {
        clear_earlier_runs();
        let key = TestDir::new(user, "share-key");
        ok(as_user(user, &key.path).args([
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            "id",
        ]));
        let public = fs::read_to_string(key.join("id.pub")).unwrap();
        let sshd = Sshd::start(user, &public);
        let backing = TestDir::new(user, "share-data");
        let mountpoint = TestDir::new(user, "share-mnt");
        let log = sshd.dir.join("sshfs.log");
        let options = format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
             BatchMode=yes,port={}",
            key.join("id").display(),
            sshd.port
        );
        let output = fs::File::create(&log).unwrap();
        // -f: sshfs stays a child of the test, so a failure shows here and drop can reap it.
        let sshfs = as_user(user, &user.home)
            .args(["sshfs", "-f", "-o", &options])
            .arg(format!("127.0.0.1:{}", backing.path.display()))
            .arg(&mountpoint.path)
            .stdout(Stdio::from(output.try_clone().unwrap()))
            .stderr(Stdio::from(output))
            .spawn()
            .expect("spawning sshfs");
        let mut share = Share {
            mountpoint,
            backing,
            _key: key,
            sshd,
            sshfs,
            log,
        };
        let deadline = Instant::now() + STARTUP;
        while !sshfs_mounted(&share.mountpoint.path) {
            let exited = share.sshfs.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "sshfs did not mount {} (exit: {exited:?})\n--- sshfs\n{}--- sshd\n{}---",
                share.mountpoint.path.display(),
                fs::read_to_string(&share.log).unwrap_or_default(),
                share.sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        share
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        unmount(&self.mountpoint.path);
        let deadline = Instant::now() + STARTUP;
        while self.sshfs.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = self.sshfs.kill();
                let _ = self.sshfs.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `/usr/sbin/sshd` on 127.0.0.1 at a free high port, with its own host key and configuration in
/// a root-owned folder; it lets in only `user`, by one key. Stopped and removed when dropped.
struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl Sshd {
    fn start(user: &User, authorized_key: &str) -> Sshd {
        // One per share: the tests of this file run side by side.
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("{E2E}/share-sshd-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        // sshd refuses to start without its privilege separation folder.
        fs::create_dir_all("/run/sshd").unwrap();
        ok(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join("host_key")));
        let authorized = dir.join("authorized_keys");
        fs::write(&authorized, authorized_key).unwrap();
        fs::set_permissions(&authorized, fs::Permissions::from_mode(0o644)).unwrap();
        let config = dir.join("sshd_config");
        // UsePAM yes: without PAM, sshd turns away users whose password is locked ("!" in
        // /etc/shadow), as useradd leaves the test users; PAM's account check lets a key in.
        // StrictModes no: the key file lies under /tmp, which everyone may write.
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\n\
                 UsePAM yes\n\
                 StrictModes no\n\
                 AuthorizedKeysFile {authorized}\n\
                 AllowUsers {name}\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 Subsystem sftp internal-sftp\n",
                dir = dir.display(),
                authorized = authorized.display(),
                name = user.name,
            ),
        )
        .unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning /usr/sbin/sshd (apt-get install openssh-server)");
        let mut sshd = Sshd { dir, port, child };
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            let exited = sshd.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "sshd did not listen on 127.0.0.1:{port} (exit: {exited:?})\n--- sshd\n{}---",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether `/proc/self/mountinfo` lists a `fuse.sshfs` mount at `path`.
fn sshfs_mounted(path: &Path) -> bool {
    fuse_mounts("fuse.sshfs").iter().any(|m| m == path)
}

/// The mount points of every mount of file system type `fstype`.
fn fuse_mounts(fstype: &str) -> Vec<PathBuf> {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// Lazily unmounts a FUSE mount (as root, whoever mounted it).
fn unmount(path: &Path) {
    for (program, args) in [
        ("fusermount3", &["-u", "-z"][..]),
        ("fusermount", &["-u", "-z"][..]),
        ("umount", &["-l"][..]),
    ] {
        let status = Command::new(program)
            .args(args)
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return;
        }
    }
}

/// Whether `E2E/NAME` (`share-LABEL-PID-N`) belongs to a test process that no longer runs.
fn of_an_earlier_run(name: &str) -> bool {
    let mut parts = name.rsplit('-');
    let (Some(_), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    name.starts_with("share-")
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// What a crashed earlier run left: its sshfs mounts, its sshd, its folders.
fn clear_earlier_runs() {
    for mountpoint in fuse_mounts("fuse.sshfs") {
        let stale = mountpoint.parent() == Some(Path::new(E2E))
            && of_an_earlier_run(&mountpoint.file_name().unwrap().to_string_lossy());
        if stale {
            unmount(&mountpoint);
        }
    }
    let Ok(entries) = fs::read_dir(E2E) else {
        return;
    };
    for entry in entries.flatten() {
        if !of_an_earlier_run(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let dir = entry.path();
        let pid = fs::read_to_string(dir.join("sshd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            // Only if that pid is still the sshd started with this folder's configuration.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let config = dir.join("sshd_config");
            if String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy()) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

//! A user's FUSE share for the e2e tests: a folder of the user's served by an sshd of the
//! test's own over loopback and mounted by the user with sshfs, without `allow_other`
//! (which neither the engine nor the agent may enter). Used by tests/share.rs and
//! tests/database.rs.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{TestDir, User, as_user, ok};

/// How long sshd may take to listen and sshfs to mount.
const STARTUP: Duration = Duration::from_secs(30);

/// Where the harness and this file keep their folders: `LABEL-PID-N`.
const E2E: &str = "/tmp/asme-e2e";

/// A folder of `user`'s (`backing`), served by an sshd of the test's own and mounted by `user`
/// at `mountpoint` with sshfs, without `allow_other`. Unmounted and stopped when dropped.
pub struct Share {
    // Dropped in this order, after `drop` has unmounted and reaped sshfs.
    pub mountpoint: TestDir,
    pub backing: TestDir,
    _key: TestDir,
    sshd: Sshd,
    sshfs: Child,
    log: PathBuf,
}

impl Share {
    /// `out` holds "hi" and is `user`'s: checked on the folder sshd serves, not through the
    /// user's mount (root may not enter it).
    pub fn assert_written_by(&self, user: &User) {
        let out = self.backing.join("out");
        let meta = fs::symlink_metadata(&out).unwrap();
        let owner = (meta.uid(), meta.gid());
        assert_eq!(owner, (user.uid, user.gid), "{}", out.display());
        assert_eq!(fs::read_to_string(&out).unwrap(), "hi\n");
    }

    pub fn mount(user: &User) -> Share {
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
pub fn fuse_mounts(fstype: &str) -> Vec<PathBuf> {
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

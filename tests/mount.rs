//! `asme mount` / `asme umount` end to end: real FUSE mounts, as root and as ordinary users,
//! used directly and through containers, checked with stat on SOURCE.

mod testenv;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use testenv::*;

const ASME: &str = env!("CARGO_BIN_EXE_asme");

/// Tests that change /dev/fuse or /etc/fuse.conf take this for writing; every user mount
/// holds it for reading.
static HOST: RwLock<()> = RwLock::new(());

/// The host as distributions ship it (the harness sets it up: `stock_fuse_host`).
fn fuse_host() -> RwLockReadGuard<'static, ()> {
    users();
    HOST.read().unwrap_or_else(|e| e.into_inner())
}

fn host_exclusive() -> RwLockWriteGuard<'static, ()> {
    drop(fuse_host());
    HOST.write().unwrap_or_else(|e| e.into_inner())
}

/// A SOURCE folder owned by `owner` and an empty mount point, unmounted when dropped.
struct Fixture {
    dir: TestDir,
}

impl Fixture {
    fn new(owner: &User, label: &str) -> Fixture {
        let dir = TestDir::new(owner, label);
        for sub in ["src", "mnt"] {
            fs::create_dir(dir.join(sub)).unwrap();
            std::os::unix::fs::chown(dir.join(sub), Some(owner.uid), Some(owner.gid)).unwrap();
        }
        Fixture { dir }
    }
    fn src(&self) -> PathBuf {
        self.dir.join("src")
    }
    fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }
    /// `asme mount ARGS src mnt` as root.
    fn mount_as_root(&self, args: &[&str]) {
        let mut cmd = Command::new(ASME);
        cmd.arg("mount").args(args).arg(self.src()).arg(self.mnt());
        ok(cmd);
        assert!(is_mounted(&self.mnt()));
    }
    /// Plain `docker run --rm -v MOUNTPOINT:/w IMAGE ARGS` (as root), its stdout.
    fn docker_run(&self, image_name: &str, args: &[&str]) -> String {
        let name = ContainerName::new("fuse");
        let volume = format!("{}:/w", self.mnt().display());
        let mut all = vec!["run", "--rm", "--name", &name.0, "-v", &volume];
        let image = image(image_name);
        all.push(&image);
        all.extend_from_slice(args);
        ok(docker(&all))
    }

    fn mount_as(&self, user: &User, args: &[&str]) {
        let (src, mnt) = (self.src(), self.mnt());
        let mut full = vec!["mount"];
        full.extend_from_slice(args);
        full.extend([src.to_str().unwrap(), mnt.to_str().unwrap()]);
        ok(asme_as(user, &self.dir.path, &full));
        assert!(is_mounted(&self.mnt()));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let mnt = CString::new(self.mnt().as_os_str().as_bytes()).unwrap();
        while is_mounted(&self.mnt()) {
            // SAFETY: a valid C string; a failed detach only leaves the loop to try again.
            if unsafe { libc::umount2(mnt.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
    }
}

fn mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn is_mounted(path: &Path) -> bool {
    let needle = format!(" {} ", path.display());
    mountinfo().lines().any(|l| l.contains(&needle))
}

fn owner_of(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of(ret: libc::c_int) -> i32 {
    if ret == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

#[test]
fn every_operation_through_a_root_mount_lands_as_the_mapped_owner() {
    let u = user1234();
    let f = Fixture::new(u, "fuse-ops");
    f.mount_as_root(&["--map", "1234/0:@1234/@0"]);
    let (m, s) = (f.mnt(), f.src());

    // create with the creator's mode and umask; write, read, truncate
    // SAFETY: umask only affects this test process's later creations, restored below.
    let old = unsafe { libc::umask(0o027) };
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o666)
        .open(m.join("file"))
        .unwrap();
    fs::create_dir(m.join("dir")).unwrap();
    // SAFETY: restores the umask saved above.
    unsafe { libc::umask(old) };
    assert_eq!(fs::metadata(s.join("file")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(s.join("dir")).unwrap().mode() & 0o7777, 0o750);
    file.write_all(b"hello, world").unwrap();
    file.seek(SeekFrom::Start(7)).unwrap();
    let mut tail = String::new();
    file.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "world");
    file.set_len(5).unwrap();
    assert_eq!(fs::read(s.join("file")).unwrap(), b"hello");
    assert_eq!(owner_of(&s.join("file")), (1234, 1234));
    assert_eq!(owner_of(&m.join("file")), (0, 0));

    // symlink, readlink, hard link (nlink at once on both names), rename flags
    std::os::unix::fs::symlink("file", m.join("link")).unwrap();
    assert_eq!(fs::read_link(m.join("link")).unwrap(), Path::new("file"));
    assert_eq!(owner_of(&s.join("link")), (1234, 1234));
    fs::hard_link(m.join("file"), m.join("dir/hard")).unwrap();
    let (a, b) = (
        fs::metadata(m.join("file")).unwrap(),
        fs::metadata(m.join("dir/hard")).unwrap(),
    );
    assert_eq!((a.nlink(), b.nlink(), a.ino()), (2, 2, b.ino()));
    assert_eq!((b.mode() & 0o777, b.uid()), (0o640, 0));
    fs::write(m.join("other"), "other").unwrap();
    let renameat2 = |from: &str, to: &str, flags: u32| {
        let (from, to) = (cstr(&m.join(from)), cstr(&m.join(to)));
        // SAFETY: valid C strings; renameat2 with AT_FDCWD.
        errno_of(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                flags,
            )
        })
    };
    assert_eq!(
        renameat2("other", "file", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(renameat2("other", "file", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(s.join("file")).unwrap(), b"other");
    assert_eq!(fs::read(s.join("other")).unwrap(), b"hello");
    fs::rename(m.join("other"), m.join("dir/moved")).unwrap();
    assert_eq!(fs::read(s.join("dir/moved")).unwrap(), b"hello");

    // chmod; chown through the map (0 is 1234), unmapped ids pass through
    fs::set_permissions(m.join("file"), fs::Permissions::from_mode(0o4711)).unwrap();
    assert_eq!(
        fs::metadata(s.join("file")).unwrap().mode() & 0o7777,
        0o4711
    );
    std::os::unix::fs::chown(m.join("file"), Some(55), Some(66)).unwrap();
    assert_eq!(owner_of(&s.join("file")), (55, 66));
    assert_eq!(owner_of(&m.join("file")), (55, 66));
    std::os::unix::fs::chown(m.join("file"), Some(0), Some(0)).unwrap();
    assert_eq!(owner_of(&s.join("file")), (1234, 1234));
    std::os::unix::fs::lchown(m.join("link"), Some(77), None).unwrap();
    assert_eq!(owner_of(&s.join("link")).0, 77);

    // utimensat with UTIME_OMIT and an explicit time
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123,
        },
    ];
    let before = fs::metadata(s.join("file")).unwrap().atime();
    let path = cstr(&m.join("file"));
    // SAFETY: valid path and a two-element array, as utimensat requires.
    let ret = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(errno_of(ret), 0);
    let after = fs::metadata(s.join("file")).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.atime()),
        (1_000_000_000, 123, before)
    );

    // mknod (fifo), xattrs, fallocate, copy_file_range, statfs, unlink, rmdir
    let fifo = cstr(&m.join("fifo"));
    // SAFETY: valid path.
    assert_eq!(errno_of(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }), 0);
    assert!(
        fs::symlink_metadata(s.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo_ext()
    );
    let (name, value) = (CString::new("user.asme").unwrap(), b"yes");
    let fpath = cstr(&m.join("dir/moved"));
    // SAFETY: valid C strings and buffer lengths.
    unsafe {
        assert_eq!(
            libc::setxattr(fpath.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 3, 0),
            0
        );
        let mut buf = [0u8; 16];
        let n = libc::getxattr(fpath.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16);
        assert_eq!(&buf[..n as usize], value);
        let n = libc::listxattr(fpath.as_ptr(), buf.as_mut_ptr().cast(), 16);
        assert_eq!(&buf[..n as usize], b"user.asme\0");
        assert_eq!(libc::removexattr(fpath.as_ptr(), name.as_ptr()), 0);
    }
    let big = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(m.join("big"))
        .unwrap();
    // SAFETY: a valid descriptor.
    let ret = unsafe { libc::fallocate(big.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(ret, 0);
    assert_eq!(fs::metadata(s.join("big")).unwrap().len(), 1 << 20);
    let src_file = fs::File::open(m.join("dir/moved")).unwrap();
    // SAFETY: valid descriptors; null offsets use the files' positions.
    let copied = unsafe {
        libc::copy_file_range(
            src_file.as_raw_fd(),
            std::ptr::null_mut(),
            big.as_raw_fd(),
            std::ptr::null_mut(),
            5,
            0,
        )
    };
    assert_eq!(copied, 5);
    drop(big);
    assert_eq!(&fs::read(s.join("big")).unwrap()[..5], b"hello");
    // SAFETY: statvfs fills the struct it is given.
    let (mut a, mut b) = unsafe {
        (
            std::mem::zeroed::<libc::statvfs>(),
            std::mem::zeroed::<libc::statvfs>(),
        )
    };
    // SAFETY: valid paths and out-structs.
    unsafe {
        assert_eq!(libc::statvfs(cstr(&m).as_ptr(), &mut a), 0);
        assert_eq!(libc::statvfs(cstr(&s).as_ptr(), &mut b), 0);
    }
    assert_eq!((a.f_blocks, a.f_bsize), (b.f_blocks, b.f_bsize));

    // locks: two open file descriptions conflict
    let l1 = fs::OpenOptions::new()
        .write(true)
        .open(m.join("file"))
        .unwrap();
    let l2 = fs::OpenOptions::new()
        .write(true)
        .open(m.join("file"))
        .unwrap();
    let lock = |fd: i32| {
        // SAFETY: a zeroed flock with the fields set below is what F_OFD_SETLK reads.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        // SAFETY: a valid descriptor and flock.
        errno_of(unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) })
    };
    assert_eq!(lock(l1.as_raw_fd()), 0);
    assert_eq!(lock(l2.as_raw_fd()), libc::EAGAIN);

    fs::remove_file(m.join("dir/hard")).unwrap();
    assert_eq!(fs::metadata(m.join("file")).unwrap().nlink(), 1);
    fs::remove_file(m.join("dir/moved")).unwrap();
    fs::remove_dir(m.join("dir")).unwrap();
    assert!(!s.join("dir").exists());

    // an open file keeps working after its name is gone
    fs::remove_file(m.join("file")).unwrap();
    assert_eq!(file.metadata().unwrap().nlink(), 0);
    file.write_all(b"!").unwrap();

    // everything created is the owner's on SOURCE (but what was chowned to 55/77 above)
    for (path, uid, _) in owners(&s) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name != "link" {
            assert_eq!(uid, 1234, "{}", path.display());
        }
    }
    // Open files make the mount busy: umount says so and leaves it mounted.
    let busy = Run::of(Command::new(ASME).arg("umount").arg(&m));
    assert!(busy.stderr.contains("busy"), "{}", busy.explain());
    assert!(is_mounted(&m));
    drop((file, l1, l2, src_file));
    ok(Command::new(ASME).args(["umount"]).arg(&m));
    assert!(!is_mounted(&m));
}

trait FifoExt {
    fn is_fifo_ext(&self) -> bool;
}
impl FifoExt for fs::FileType {
    fn is_fifo_ext(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[test]
fn paths_far_beyond_path_max_work() {
    let u = user1234();
    let f = Fixture::new(u, "fuse-deep");
    f.mount_as_root(&[]);
    // 30 levels of 250-byte names: 7,500 bytes, almost twice PATH_MAX.
    let name = CString::new("d".repeat(250)).unwrap();
    let open_at = |dir: i32, name: &CString| {
        // SAFETY: valid descriptor and C string; the result is checked.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let mut dir = fs::File::open(f.mnt()).map(OwnedFd::from).unwrap();
    for _ in 0..30 {
        // SAFETY: valid descriptor and C string.
        let ret = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
        assert_eq!(ret, 0);
        dir = open_at(dir.as_raw_fd(), &name);
    }
    let leaf = CString::new("leaf").unwrap();
    // SAFETY: valid descriptor and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            leaf.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: the descriptor just opened.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    // Seen on SOURCE by walking the same chain.
    let mut dir = fs::File::open(f.src()).map(OwnedFd::from).unwrap();
    for _ in 0..30 {
        dir = open_at(dir.as_raw_fd(), &name);
    }
    // SAFETY: zeroed stat filled by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and out-struct.
    let ret = unsafe { libc::fstatat(dir.as_raw_fd(), leaf.as_ptr(), &mut st, 0) };
    assert_eq!(ret, 0);
    assert_eq!(
        st.st_uid, 0,
        "root mounted with the default map: root is itself"
    );
    ok(Command::new("rm")
        .arg("-rf")
        .arg(f.mnt().join(name.to_str().unwrap())));
}

#[test]
fn names_and_numbers_map_and_unmapped_ids_pass_through() {
    let u = user1234();
    let f = Fixture::new(u, "fuse-names");
    // daemon is uid/gid 1 on Debian; a name on one side, a number on the other.
    fs::write(f.src().join("mine"), "").unwrap();
    std::os::unix::fs::chown(f.src().join("mine"), Some(1234), Some(1234)).unwrap();
    fs::write(f.src().join("stranger"), "").unwrap();
    std::os::unix::fs::chown(f.src().join("stranger"), Some(999), Some(998)).unwrap();
    fs::write(f.src().join("rootfile"), "").unwrap();
    f.mount_as_root(&["--map", &format!("{}/daemon:@1234/@1", u.name)]);
    let m = f.mnt();
    assert_eq!(owner_of(&m.join("mine")), (1, 1));
    assert_eq!(owner_of(&m.join("stranger")), (999, 998));
    assert_eq!(owner_of(&m.join("rootfile")), (0, 0));
    // daemon (uid 1) creates: stored as 1234; an unmapped creator (999) stays 999.
    ok(Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--clear-groups", "touch"])
        .arg(m.join("by-daemon")));
    ok(Command::new("setpriv")
        .args(["--reuid=999", "--regid=998", "--clear-groups", "sh", "-c"])
        .arg(format!("umask 0; mkdir {}/x 2>&1 || true", m.display())));
    assert_eq!(owner_of(&f.src().join("by-daemon")), (1234, 1234));
    assert_eq!(owner_of(&m.join("by-daemon")), (1, 1));
    // 999 may not write the 1234-owned SOURCE root (shown 1:1, mode 755): the kernel says no.
    assert!(!f.src().join("x").exists());
}

#[test]
fn root_containers_write_as_the_user_through_a_user_mount() {
    let _host = fuse_host();
    for u in users() {
        let f = Fixture::new(u, "fuse-user");
        fs::write(f.src().join("stranger"), "").unwrap();
        std::os::unix::fs::chown(f.src().join("stranger"), Some(999), Some(999)).unwrap();
        f.mount_as(u, &[]);
        assert!(mountinfo().contains(&format!("user_id={}", u.uid)));
        let out = f.docker_run(
            "busybox",
            &[
                "sh",
                "-c",
                "echo x > /w/f && mkdir -p /w/d/e && ln -s f /w/l && ln /w/f /w/h && \
                 stat -c '%u:%g %h' /w/f /w/stranger; chown 5 /w/f 2>&1; echo chown=$?",
            ],
        );
        assert!(out.contains("0:0 2\n999:999 1\n"), "{out}");
        assert!(
            out.contains("Operation not permitted") && out.contains("chown=1"),
            "{out}"
        );
        assert_all_owned(&f.src().join("d"), u, 1);
        for n in ["f", "l", "h", "d"] {
            assert_eq!(owner_of(&f.src().join(n)), (u.uid, u.gid), "{n}");
        }
        ok(asme_as(
            u,
            &f.dir.path,
            &["umount", f.mnt().to_str().unwrap()],
        ));
        assert!(!is_mounted(&f.mnt()));
    }
}

#[test]
fn refusals_are_one_line_and_leave_nothing_mounted() {
    let _host = fuse_host();
    let u = user1234();
    let f = Fixture::new(u, "fuse-refuse");
    let file = f.dir.join("plain-file");
    fs::write(&file, "").unwrap();
    let (src, mnt) = (f.src(), f.mnt());
    let (src, mnt, file) = (
        src.to_str().unwrap(),
        mnt.to_str().unwrap(),
        file.to_str().unwrap(),
    );
    let cases: &[(&[&str], &str)] = &[
        (&["mount", "--map", "1234", src, mnt], "bad --map entry"),
        (
            &["mount", "--map", "nobody-here/0", src, mnt],
            "no such user",
        ),
        (
            &["mount", "--map", "@1/2", src, mnt],
            "a user maps to a user",
        ),
        (&["mount", "/nonexistent/src", mnt], "no such folder"),
        (&["mount", file, mnt], "not a folder"),
        (&["mount", src, "/nonexistent/mnt"], "no such folder"),
        (&["mount", "-o", "turbo", src, mnt], "unknown mount option"),
        (&["umount", mnt], "not a mount point"),
        (&["umount", "/proc"], "not asme's"),
    ];
    for (args, expect) in cases {
        let run = Run::of(asme_as(u, &f.dir.path, args));
        assert_eq!(run.code(), Some(1), "{}", run.explain());
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.explain());
        assert!(
            run.stderr.starts_with("asme: ") && run.stderr.contains(expect),
            "{}",
            run.explain()
        );
    }
    // Other tests mount in parallel: only this fixture's folders matter.
    let ours = f.dir.path.display().to_string();
    assert!(!mountinfo().contains(&ours), "{}", mountinfo());
    // Busy: a second mount on the same point.
    f.mount_as(u, &[]);
    let run = Run::of(asme_as(u, &f.dir.path, &["mount", src, mnt]));
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.contains("already a mount point"),
        "{}",
        run.explain()
    );
    assert_eq!(mountinfo().matches(&format!(" {mnt} ")).count(), 1);
}

#[test]
fn users_are_told_what_dev_fuse_and_fuse_conf_need() {
    let _host = host_exclusive();
    let u = user1234();
    let f = Fixture::new(u, "fuse-host");
    let (src, mnt) = (f.src(), f.mnt());
    let args = ["mount", src.to_str().unwrap(), mnt.to_str().unwrap()];

    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o600)).unwrap();
    let run = Run::of(asme_as(u, &f.dir.path, &args));
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(run.code(), Some(1), "{}", run.explain());
    assert!(
        run.stderr.contains("/dev/fuse") && run.stderr.contains("0666"),
        "{}",
        run.explain()
    );

    let conf = fs::read_to_string("/etc/fuse.conf").unwrap();
    fs::write(
        "/etc/fuse.conf",
        conf.replace("user_allow_other", "#user_allow_other"),
    )
    .unwrap();
    let run = Run::of(asme_as(u, &f.dir.path, &args));
    let private = Run::of(asme_as(
        u,
        &f.dir.path,
        &["mount", "-o", "private", args[1], args[2]],
    ));
    fs::write("/etc/fuse.conf", conf).unwrap();
    assert_eq!(run.code(), Some(1), "{}", run.explain());
    assert!(run.stderr.contains("user_allow_other"), "{}", run.explain());
    // -o private needs no fuse.conf line: a mount only the user can use.
    assert_eq!(private.code(), Some(0), "{}", private.explain());
    let line = mountinfo()
        .lines()
        .find(|l| l.contains(&format!(" {} ", mnt.display())))
        .map(str::to_owned)
        .expect("mounted");
    assert!(!line.contains("allow_other"), "{line}");
}

/// The server as a child of the test: `--notify-ready` prints `ready` once mounted.
fn serve(user: &User, f: &Fixture) -> Child {
    let (src, mnt) = (f.src(), f.mnt());
    let cmd = asme_as(
        user,
        &f.dir.path,
        &[
            "mount",
            "--notify-ready",
            src.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    );
    let (child, _out) = spawn_until(cmd, "ready");
    child
}

#[test]
fn sigterm_unmounts_and_a_killed_server_is_recovered() {
    let _host = fuse_host();
    let u = user1000();
    let f = Fixture::new(u, "fuse-life");
    let mnt = f.mnt();

    let mut server = serve(u, &f);
    fs::write(mnt.join("kept"), "1").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
    assert_eq!(fs::read(f.src().join("kept")).unwrap(), b"1");

    let mut server = serve(u, &f);
    server.kill().unwrap();
    server.wait().unwrap();
    // ENOTCONN; ECONNABORTED while the kernel still takes the server's io_uring queues down.
    let dead = fs::metadata(&mnt).unwrap_err().raw_os_error();
    assert!(
        matches!(dead, Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "a killed server's mount answered {dead:?}"
    );
    let (src, m) = (f.src(), mnt.to_str().unwrap().to_owned());
    let run = Run::of(asme_as(
        u,
        &f.dir.path,
        &["mount", src.to_str().unwrap(), &m],
    ));
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.contains("stale") && run.stderr.contains("asme umount"),
        "{}",
        run.explain()
    );
    ok(asme_as(u, &f.dir.path, &["umount", &m]));
    assert!(!is_mounted(&mnt));
    f.mount_as(u, &[]);
    assert_eq!(fs::read(mnt.join("kept")).unwrap(), b"1");
    ok(asme_as(u, &f.dir.path, &["umount", &m]));
}

/// A mount taken down lazily (`asme umount --lazy`) lives on, detached, until its last
/// file is closed, and only then does its server end: a mount made at the same place
/// meanwhile must outlive that (fuser used to unmount its mount point by path as it ended).
#[test]
fn a_new_mount_outlives_the_server_of_the_one_it_replaced() {
    let u = user1234();
    let f = Fixture::new(u, "fuse-remount");
    let (src, mnt) = (f.src(), f.mnt());
    let m = mnt.to_str().unwrap();
    f.mount_as_root(&["--map", "1234/0:@1234/@0"]);
    let held = fs::File::create(mnt.join("held")).unwrap();
    let [old] = servers_of(&src)[..] else {
        panic!("not one server for {}", src.display())
    };
    ok(Command::new(ASME).args(["umount", "--lazy", m]));
    f.mount_as_root(&["--map", "1234/0:@1234/@0"]);
    drop(held);
    assert!(exits(old), "the detached mount's server did not exit");
    assert!(
        is_mounted(&mnt),
        "the old server took the new mount down as it ended"
    );
    fs::write(mnt.join("after"), "1").unwrap();
    assert_eq!(owner_of(&src.join("after")), (1234, 1234));
    ok(Command::new(ASME).args(["umount", m]));
}

#[test]
fn a_container_exercises_every_operation_through_the_mount() {
    let u = user1234();
    let f = Fixture::new(u, "fuse-container");
    f.mount_as_root(&["--map", "1234/0:@1234/@0"]);
    let script = r#"
import os, fcntl, ctypes
os.chdir('/w'); os.umask(0o022)
fd = os.open('f', os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
os.pwrite(fd, b'x' * 10000, 5000); assert os.pread(fd, 3, 14997) == b'xxx'
os.ftruncate(fd, 100); os.posix_fallocate(fd, 0, 8192); os.fsync(fd)
fcntl.lockf(fd, fcntl.LOCK_EX); fcntl.lockf(fd, fcntl.LOCK_UN)
os.mkdir('d'); os.symlink('../f', 'd/s'); assert os.readlink('d/s') == '../f'
os.link('f', 'd/h'); assert os.stat('f').st_nlink == 2 and os.stat('d/h').st_ino == os.stat('f').st_ino
os.rename('d/h', 'g'); os.chmod('g', 0o600); os.chown('g', 0, 0); os.utime('g', ns=(1, 2000000000))
assert os.stat('g').st_mtime_ns == 2000000000 and os.stat('g').st_mode & 0o777 == 0o600
os.mkfifo('p'); os.setxattr('g', 'user.k', b'v'); assert os.getxattr('g', 'user.k') == b'v'
out = os.open('copy', os.O_CREAT | os.O_WRONLY, 0o644)
assert os.copy_file_range(fd, out, 50, 0, 0) == 50
assert os.statvfs('.').f_bsize > 0 and sorted(os.listdir('.')) == ['copy', 'd', 'f', 'g', 'p']
os.unlink('p'); os.unlink('d/s'); os.rmdir('d')
print('all operations ok')
"#;
    let out = f.docker_run("debian", &["python3", "-c", script]);
    assert_eq!(out.trim(), "all operations ok");
    assert_all_owned(&f.src(), u, 3);
}

/// Pids of the `asme mount` servers serving `source`.
fn servers_of(source: &Path) -> Vec<i32> {
    let needle = source.as_os_str().as_bytes();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.contains(&b"--notify-ready".as_slice()) && args.contains(&needle)
            })
        })
        .collect()
}

/// Waits (pidfd, no polling) until `pid` has exited; false after 20 s.
fn exits(pid: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return true; // already gone
    }
    // SAFETY: a descriptor we own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 20_000) == 1 }
}

/// A detached `--rm` container (which docker cannot start again) keeps asme's own server:
/// it serves until the container stops, then exits and leaves nothing. (Without `--rm` the
/// bind mount is a volume of the driver instead: tests/volume.rs.)
#[test]
fn fuse_strategy_serves_a_detached_container_until_it_stops() {
    let _host = fuse_host();
    let u = user1234();
    let dir = TestDir::new(u, "fuse-strategy");
    let name = ContainerName::new("fuse-strategy");
    let mount = format!("{}:/w", dir.path.display());
    let points = u.home.join(".cache/asme/v1/mnt");
    let listing = || -> Vec<_> {
        fs::read_dir(&points).map_or(Vec::new(), |d| d.flatten().map(|e| e.path()).collect())
    };
    let before = listing();
    let out = ok(asme_as(
        u,
        &dir.path,
        &[
            "--strategy",
            "fuse",
            "run",
            "-d",
            "--rm",
            "--name",
            &name.0,
            "-v",
            &mount,
            &image("busybox"),
            "sh",
            "-c",
            "touch /w/started && exec tail -f /dev/null",
        ],
    ));
    assert!(!out.trim().is_empty());
    let servers = servers_of(&dir.path);
    assert_eq!(servers.len(), 1, "one server for the one bind mount");
    // The host's view is detached already; the container still writes, as root, as the user.
    assert!(!mountinfo().contains(&format!("{} ", dir.path.display())));
    ok(docker(&[
        "exec",
        &name.0,
        "sh",
        "-c",
        "mkdir /w/d && echo x > /w/d/f && id -u",
    ]));
    assert_all_owned(&dir.path, u, 3);
    ok(docker(&["stop", "--time", "1", &name.0]));
    assert!(exits(servers[0]), "the server outlived its container");
    assert_eq!(
        listing(),
        before,
        "mount points left in {}",
        points.display()
    );
}

#[test]
fn a_non_owners_write_clears_set_id_bits_as_on_any_filesystem() {
    let u = user1234();
    // Passthrough (root's default) and through the server (as ordinary users' mounts are).
    for options in [&[][..], &["-o", "nopassthrough"][..]] {
        let f = Fixture::new(u, "fuse-setid");
        f.mount_as_root(options);
        writes_by_nobody_clear_set_id_bits(&f);
    }
}

fn writes_by_nobody_clear_set_id_bits(f: &Fixture) {
    for (mode, flag) in [
        (0o4777, "O_WRONLY"),
        (0o2777, "O_RDWR"),
        (0o6777, "O_WRONLY"),
    ] {
        let file = f.mnt().join("setid");
        fs::write(&file, "").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        // As pjdfstest's chmod/12.t: nobody (65534) opens, writes, and fstats that descriptor.
        let script = format!(
            "import os; fd = os.open({:?}, os.{flag}); os.write(fd, b'x'); \
             print(oct(os.fstat(fd).st_mode & 0o7777))",
            file.display().to_string()
        );
        let out = ok(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", &script]));
        assert_eq!(
            out.trim(),
            "0o777",
            "fstat after a write by nobody, mode {mode:o}"
        );
        // Both SOURCE and the mount's view at once (not after the attribute timeout).
        let stored = fs::metadata(f.src().join("setid")).unwrap().mode() & 0o7777;
        let shown = fs::metadata(&file).unwrap().mode() & 0o7777;
        assert_eq!(
            (stored, shown),
            (0o777, 0o777),
            "mode {mode:o} after a write by nobody ({flag})"
        );
        fs::remove_file(&file).unwrap();
    }
}

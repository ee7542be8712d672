//! e2e: `asme fix` on trees that a malicious container polluted, run by an ordinary user
//! (through the engine) and by root (in-process).

mod testenv;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use testenv::{Run, TestDir, User, asme_as, docker, image, ok, user1234};

/// uid, gid and mode of every entry under `root` (not following symlinks), for before/after
/// comparisons.
fn listing(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        out.insert(p.clone(), (meta.uid(), meta.gid(), meta.mode()));
        if meta.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// What lies outside the trees and must never change: the files a symlink or hard link in
/// the trees points at, and /etc.
struct Outside {
    dir: PathBuf,
    before: BTreeMap<PathBuf, (u32, u32, u32)>,
}

impl Outside {
    fn new(label: &str) -> Outside {
        let dir = PathBuf::from(format!(
            "/tmp/asme-e2e/outside-{label}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("secret"), "root's\n").unwrap();
        fs::create_dir(dir.join("rootdir")).unwrap();
        fs::write(dir.join("rootdir/file"), "x").unwrap();
        let mut outside = Outside {
            dir,
            before: BTreeMap::new(),
        };
        outside.before = outside.snapshot();
        outside
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u32, u32)> {
        let mut all = listing(&self.dir);
        all.extend(listing(Path::new("/etc")));
        all
    }

    fn assert_unchanged(&self) {
        let after = self.snapshot();
        let changed: Vec<_> = after
            .iter()
            .filter(|(p, v)| self.before.get(*p) != Some(v))
            .collect();
        assert!(changed.is_empty(), "changed outside the tree: {changed:?}");
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A root container writes everything a build might, plus every trap it could set.
fn pollute(dir: &Path, outside: &Path) {
    let mount = format!("{}:/w", dir.display());
    let script = r#"set -e; cd /w
        mkdir -p build/obj/deep; echo x > build/obj/deep/a.o; touch build/out
        ln -s /etc/shadow build/shadow-link; ln -s /outside build/dir-link
        mkfifo build/fifo; mknod build/null c 1 3
        python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('/w/build/sock')"
        touch "build/new
line"; touch "$(printf 'build/bad-\377-utf8')"
        mkdir build/locked; touch build/locked/inside; chmod 000 build/locked
        mkdir -p other; touch other/by-999; chown 999:999 other/by-999"#;
    ok(docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        &image("debian"),
        "bash",
        "-c",
        script,
    ]));
    // A hard link to a root-owned file outside the tree (made by root on the host: link(2)
    // cannot cross the container's mounts).
    fs::hard_link(outside.join("secret"), dir.join("build/hard-out")).unwrap();
}

fn fix_as_user(dir: &Path, args: &[&str]) -> Run {
    let mut argv = vec!["fix"];
    argv.extend_from_slice(args);
    Run::of(asme_as(user1234(), dir, &argv))
}

#[test]
fn an_ordinary_user_gets_the_tree_back_and_nothing_else_changes() {
    // Through the agent, and through a throwaway container (where no agent can run).
    for no_agent in ["0", "1"] {
        ordinary_user_fix(no_agent);
    }
}

fn ordinary_user_fix(no_agent: &str) {
    let user = user1234();
    let dir = TestDir::new(user, "fix");
    let outside = Outside::new("user");
    pollute(&dir.path, &outside.dir);
    let mut cmd = asme_as(user1234(), &dir.path, &["fix", "build", "other"]);
    cmd.env("ASME_NO_AGENT", no_agent);
    let run = Run::of(&mut cmd);
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    // One summary line per tree on stdout; the hard link is skipped and said so.
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("asme fix: "))
            .count(),
        2,
        "{}",
        run.explain()
    );
    assert!(
        run.stderr.contains("build/hard-out") && run.stderr.contains("hard links"),
        "{}",
        run.explain()
    );
    for (path, (uid, gid, _)) in listing(&dir.path) {
        if path.ends_with("hard-out") {
            assert_eq!(
                (uid, gid),
                (0, 0),
                "the hard-linked file must be left alone"
            );
        } else if path.ends_with("by-999") {
            assert_eq!(
                (uid, gid),
                (999, 999),
                "not root's: left alone without --all"
            );
        } else {
            assert_eq!((uid, gid), (user.uid, user.gid), "{}", path.display());
        }
    }
    // The locked folder was entered (the walk runs as root in the container).
    assert_eq!(
        fs::symlink_metadata(dir.join("build/locked/inside"))
            .unwrap()
            .uid(),
        user.uid
    );
    outside.assert_unchanged();
}

#[test]
fn all_dry_run_and_refusals() {
    let user = user1234();
    let dir = TestDir::new(user, "fix-opts");
    let outside = Outside::new("opts");
    pollute(&dir.path, &outside.dir);
    let before = listing(&dir.path);
    // --dry-run changes nothing; as an ordinary user it walks with the user's own rights, so
    // the locked folder is reported, not entered.
    let run = fix_as_user(&dir.path, &["--dry-run", "build"]);
    assert_eq!(listing(&dir.path), before);
    assert!(run.stdout.contains("would change"), "{}", run.explain());
    assert!(run.stderr.contains("build/locked"), "{}", run.explain());
    assert_eq!(
        run.code(),
        Some(1),
        "an unreadable folder is an error\n{}",
        run.explain()
    );
    // --all takes other users' entries too.
    fix_as_user(&dir.path, &["--all", "other"]).ok();
    assert_eq!(
        fs::metadata(dir.join("other/by-999")).unwrap().uid(),
        user.uid
    );
    // Refusals: one line, exit 1, nothing changed.
    let cases: &[(&[&str], &str)] = &[
        (&["/etc"], "is not yours"),
        (
            &["--owner", "1000", "build"],
            "only root can give files to another user",
        ),
        (&["no-such-dir"], "no-such-dir: No such file or directory"),
        (
            &["/no/such/path"],
            "/no/such/path: No such file or directory",
        ),
        (&["--owner", "bob", "build"], "invalid owner"),
    ];
    let before = listing(&dir.path);
    for (args, needle) in cases {
        let run = fix_as_user(&dir.path, args);
        assert_eq!(run.code(), Some(1), "{}", run.explain());
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.explain());
        assert!(run.stderr.contains(needle), "{}", run.explain());
    }
    assert_eq!(listing(&dir.path), before);
    outside.assert_unchanged();
}

/// `asme fix ... | head -1`: a reader that has what it wanted and closed the pipe is no
/// error; every tree is still given back, and nothing is said about the pipe.
#[test]
fn a_closed_stdout_is_no_error() {
    let user = user1234();
    let dir = TestDir::new(user, "fix-pipe");
    for tree in ["one", "two"] {
        fs::create_dir(dir.join(tree)).unwrap();
        fs::write(dir.join(tree).join("f"), "x").unwrap();
    }
    // The harness runs as root: the trees' contents stay root's, the trees the user's.
    for tree in ["one", "two"] {
        std::os::unix::fs::chown(dir.join(tree), Some(user.uid), Some(user.gid)).unwrap();
    }
    let mut cmd = asme_as(user, &dir.path, &["fix", "one", "two"]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer);
    let run = Run::of(&mut cmd);
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert_eq!(run.stderr, "", "{}", run.explain());
    for tree in ["one", "two"] {
        let meta = fs::metadata(dir.join(tree).join("f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    }
}

#[test]
fn a_nested_mount_point_is_not_entered_unless_asked() {
    let user = user1234();
    let dir = TestDir::new(user, "fix-nested");
    let nested = dir.join("tree/mnt");
    fs::create_dir_all(&nested).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&nested));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(nested.clone());
    fs::write(nested.join("root-file"), "").unwrap();
    fs::write(dir.join("tree/mine"), "").unwrap();
    let run = fix_as_user(&dir.path, &["tree"]);
    assert!(
        run.stdout.contains("1 on other filesystems"),
        "{}",
        run.explain()
    );
    assert_eq!(fs::metadata(nested.join("root-file")).unwrap().uid(), 0);
    assert_eq!(fs::metadata(dir.join("tree/mine")).unwrap().uid(), user.uid);
    // Root may ask to cross it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.args(["fix", "--cross-mounts", "--owner", "1234:1234"])
        .arg(dir.join("tree"));
    ok(&mut cmd);
    assert_eq!(
        fs::metadata(nested.join("root-file")).unwrap().uid(),
        user.uid
    );
}

#[test]
fn a_folder_swapped_for_a_symlink_during_the_walk_redirects_nothing() {
    let user = user1234();
    let dir = TestDir::new(user, "fix-swap");
    let outside = Outside::new("swap");
    let mount = format!("{}:/w", dir.path.display());
    // A wide tree, and a container that keeps swapping one of its folders for a symlink to
    // a root-owned folder outside.
    let build = "mkdir -p /w/t; cd /w/t; for i in $(seq 1 60); do mkdir d$i; for j in $(seq 1 20); do touch d$i/f$j; done; done; echo built";
    ok(docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        &image("busybox"),
        "sh",
        "-c",
        build,
    ]));
    let swapper = testenv::ContainerName::new("swapper");
    // Each swapped folder trades places with a symlink, atomically (renameat2
    // RENAME_EXCHANGE) and as fast as it can, so it is a folder half the time and a link to a
    // root-owned folder outside the other half. The links name the host's path: that is
    // where a walker that followed them would go.
    // Absolute links are also stopped by the refusal to cross mounts; relative ones on the
    // same filesystem only by never following a link.
    let host = outside.dir.display();
    let relative = format!(
        "../../{}",
        outside.dir.file_name().unwrap().to_string_lossy()
    );
    let swap = format!(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nos.chdir('/w/t')\n\
         links = {{b'd30': '{relative}/rootdir', b'd45': '{host}', b'd7': '{relative}', b'd12': '{host}/rootdir'}}\n\
         for n, target in links.items(): os.symlink(target, n + b'.link')\n\
         while True:\n    for n in links: libc.renameat2(-100, n, -100, n + b'.link', 2)\n"
    );
    ok(docker(&[
        "run",
        "-d",
        "--name",
        &swapper.0,
        "-v",
        &mount,
        &image("debian"),
        "python3",
        "-c",
        &swap,
    ]));
    for round in 0..8 {
        // Alternate the engine path (user) and the in-process walker (root).
        if round % 2 == 0 {
            let run = fix_as_user(&dir.path, &["t"]);
            assert!(run.code().is_some(), "{}", run.explain());
        } else {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_asme"));
            cmd.args(["fix", "--owner", "1234:1234"]).arg(dir.join("t"));
            Run::of(&mut cmd);
        }
        ok(docker(&[
            "exec",
            &swapper.0,
            "sh",
            "-c",
            "chown -R 0:0 /w/t 2>/dev/null; true",
        ]));
    }
    drop(swapper);
    outside.assert_unchanged();
}

#[test]
fn root_fixes_in_process_for_any_owner() {
    let dir = TestDir::new(user1234(), "fix-root");
    let outside = Outside::new("root");
    pollute(&dir.path, &outside.dir);
    // from-path: the owner of the top folder.
    fs::create_dir_all(dir.join("build")).unwrap();
    std::os::unix::fs::chown(dir.join("build"), Some(1234), Some(1234)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.args(["fix", "--owner", "from-path"])
        .arg(dir.join("build"));
    let run = Run::of(&mut cmd);
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert_eq!(
        fs::symlink_metadata(dir.join("build/obj/deep/a.o"))
            .unwrap()
            .uid(),
        1234
    );
    assert_eq!(
        fs::symlink_metadata(dir.join("build/locked/inside"))
            .unwrap()
            .uid(),
        1234
    );
    let mode = fs::symlink_metadata(dir.join("build/locked"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0, "modes are not touched");
    outside.assert_unchanged();
}

/// `asme --strategy fix run` as user 1234, with the test folder mounted at /w.
fn fix_strategy(user: &User, dir: &Path, args: &[&str]) -> Command {
    let mount = format!("{}:/w", dir.display());
    let mut argv = vec!["--strategy", "fix", "run", "--rm", "-v", &mount];
    argv.extend_from_slice(args);
    asme_as(user, dir, &argv)
}

fn assert_given_back(dir: &Path, user: &User) {
    let wrong: Vec<_> = listing(dir)
        .into_iter()
        .filter(|(_, (u, g, _))| (*u, *g) != (user.uid, user.gid))
        .collect();
    assert!(wrong.is_empty(), "not given back: {wrong:?}");
}

#[test]
fn the_fix_strategy_repairs_however_the_run_ends() {
    let user = user1234();
    let bb = image("busybox");
    // A normal exit: the command's status and output are untouched, the tree is given back.
    let dir = TestDir::new(user, "fixrun-exit");
    let run = Run::of(fix_strategy(
        user,
        &dir.path,
        &[
            &bb,
            "sh",
            "-c",
            "mkdir -p /w/a/b; touch /w/a/b/f; echo hello; exit 3",
        ],
    ));
    assert_eq!(
        (run.code(), run.stdout.as_str()),
        (Some(3), "hello\n"),
        "{}",
        run.explain()
    );
    assert_given_back(&dir.path, user);
    // An image user at another uid (app, 1000) is given back too.
    let dir = TestDir::new(user, "fixrun-app");
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o777)).unwrap();
    Run::of(fix_strategy(
        user,
        &dir.path,
        &[&image("user1000"), "sh", "-c", "mkdir /w/d; touch /w/d/f"],
    ))
    .ok();
    assert_given_back(&dir.path, user);
    // docker kill, SIGTERM and SIGINT sent to asme: the run ends, the repair still happens.
    for (how, status) in [("docker-kill", 137), ("TERM", 143), ("INT", 130)] {
        let dir = TestDir::new(user, &format!("fixrun-{how}"));
        let name = testenv::ContainerName::new("fixrun");
        let (mut child, _out) = testenv::spawn_until(
            fix_strategy(
                user,
                &dir.path,
                &[
                    "--name",
                    &name.0,
                    &bb,
                    "sh",
                    "-c",
                    "touch /w/f; echo up; sleep 600",
                ],
            ),
            "up",
        );
        match how {
            "docker-kill" => {
                ok(docker(&["kill", &name.0]));
            }
            signal => {
                let sig = if signal == "TERM" {
                    nix::sys::signal::SIGTERM
                } else {
                    nix::sys::signal::SIGINT
                };
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
            }
        }
        assert_eq!(child.wait().unwrap().code(), Some(status), "{how}");
        assert_given_back(&dir.path, user);
    }
}

#[test]
fn a_repair_left_by_a_killed_asme_is_completed_by_the_next_run() {
    // uid 1000: no other test here runs asme as it, so nobody else completes the repair.
    let user = testenv::user1000();
    let bb = image("busybox");
    let dir = TestDir::new(user, "fixrun-sigkill");
    let name = testenv::ContainerName::new("fixrun-kill");
    let (child, _out) = testenv::spawn_until(
        fix_strategy(
            user,
            &dir.path,
            &[
                "--name",
                &name.0,
                &bb,
                "sh",
                "-c",
                "mkdir /w/left; touch /w/left/f; echo up; sleep 600",
            ],
        ),
        "up",
    );
    testenv::kill_asme(child, &name);
    assert_eq!(
        fs::metadata(dir.join("left/f")).unwrap().uid(),
        0,
        "nothing repaired yet"
    );
    let journal = user.home.join(".cache/asme/v1/pending");
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 1);
    // Any next asme run completes it, and says so.
    let other = TestDir::new(user, "fixrun-next");
    let run = Run::of(asme_as(user, &other.path, &["run", "--rm", &bb, "true"]));
    assert!(
        run.stderr
            .contains("completing the repair of an earlier run"),
        "{}",
        run.explain()
    );
    run.ok();
    assert_given_back(&dir.path, user);
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 0);
}

#[test]
fn a_tree_whose_own_name_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let user = user1234();
    let dir = TestDir::new(user, "fix-name");
    let tree = dir.path.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"));
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("root-file"), "").unwrap();
    let run = Run::of(asme_as(user, &dir.path, &["fix"]).arg(&tree));
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert_given_back(&tree, user);
}

/// A folder large enough to be shared out among the cores in slices, its entries mixed so that
/// the walk keeps switching between a stat by name (runs of fine files) and acting through a
/// descriptor: every trap is still left alone, and the summary still counts each entry once.
#[test]
fn a_large_mixed_folder_is_fixed_exactly() {
    use std::os::unix::fs::{lchown, symlink};
    let dir = TestDir::new(user1234(), "fix-large");
    let outside = Outside::new("large");
    let big = dir.join("big");
    fs::create_dir(&big).unwrap();
    std::os::unix::fs::chown(&big, Some(1234), Some(1234)).unwrap();
    /// What entry `i` is, and what the walk must do with it.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Kind {
        HardLinkOut,
        RootSymlink,
        Foreign,
        Fine,
        Root,
    }
    let kind = |i: usize| match i {
        _ if i % 100 == 7 => Kind::HardLinkOut,
        _ if i % 10 == 3 => Kind::RootSymlink,
        _ if i % 25 == 11 => Kind::Foreign,
        _ if (i / 100).is_multiple_of(2) => Kind::Fine,
        _ => Kind::Root,
    };
    let n = 1500;
    for i in 0..n {
        let path = big.join(format!("e{i:04}"));
        match kind(i) {
            Kind::HardLinkOut => fs::hard_link(outside.dir.join("secret"), &path).unwrap(),
            Kind::RootSymlink => symlink("/etc/shadow", &path).unwrap(),
            _ => fs::write(&path, "").unwrap(),
        }
        let (uid, gid) = match kind(i) {
            Kind::Foreign => (999, 999),
            Kind::Fine => (1234, 1234),
            _ => (0, 0),
        };
        lchown(&path, Some(uid), Some(gid)).unwrap();
    }
    let count = |k: Kind| (0..n).filter(|&i| kind(i) == k).count();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.args(["fix", "--owner", "1234:1234"]).arg(&big);
    let run = Run::of(&mut cmd);
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let summary = format!(
        "asme fix: {} entries: {} changed, {} already fine, {} skipped ({} hard-linked, 0 on \
         other filesystems) in ",
        n + 1,
        count(Kind::Root) + count(Kind::RootSymlink),
        count(Kind::Fine) + count(Kind::Foreign) + 1,
        count(Kind::HardLinkOut),
        count(Kind::HardLinkOut),
    );
    assert!(run.stdout.starts_with(&summary), "{}", run.explain());
    for i in 0..n {
        let path = big.join(format!("e{i:04}"));
        let meta = fs::symlink_metadata(&path).unwrap();
        let want = match kind(i) {
            Kind::HardLinkOut => (0, 0),
            Kind::Foreign => (999, 999),
            _ => (1234, 1234),
        };
        assert_eq!(
            (meta.uid(), meta.gid()),
            want,
            "{} ({:?})",
            path.display(),
            kind(i)
        );
    }
    assert_eq!(
        fs::read_link(big.join("e0003")).unwrap(),
        Path::new("/etc/shadow")
    );
    outside.assert_unchanged();
}

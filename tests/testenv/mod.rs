//! The e2e harness: a real engine, local images, ordinary host users, checks with stat.
//!
//! The tests run as root because they create the test users and hand them folders; asme itself
//! always runs as one of those users (uid 1000 and uid 1234, both in the docker group), the
//! way its users run it.
#![allow(dead_code)]

pub mod share;

use std::borrow::BorrowMut;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A host user that runs asme.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub const IMAGES: &[&str] = &[
    "busybox",
    "nopasswd",
    "user1000",
    "debian",
    "debian-doc",
    "postgres",
];

/// The users the tests run asme as: whoever has uid 1000 on the host, and `asme1234`.
pub fn users() -> &'static [User; 2] {
    setup();
    static USERS: OnceLock<[User; 2]> = OnceLock::new();
    USERS.get_or_init(|| [lookup_user(1000), lookup_user(1234)])
}

pub fn user1000() -> &'static User {
    &users()[0]
}

pub fn user1234() -> &'static User {
    &users()[1]
}

/// Once per test process: root, a reachable engine, the users, the images.
fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        assert!(
            rustix::process::geteuid().is_root(),
            "the e2e tests run as root: they create the test users (uid 1000, 1234) and run asme \
             as them; run `sudo -E cargo test`"
        );
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        let reachable = info.as_ref().is_ok_and(|o| o.status.success());
        assert!(
            reachable,
            "no Docker engine is reachable (docker info failed: {}). Start one: `sudo dockerd &` \
             (or `sudo systemctl start docker`; `apt-get install docker.io` if it is missing), \
             or run `bash .ci/run`, which installs and starts everything",
            info.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_else(|e| e.to_string())
        );
        ensure_user(1000, "asme1000");
        ensure_user(1234, "asme1234");
        stock_fuse_host();
        // An agent left running by another build would answer for this one: start afresh.
        let stop = Command::new(env!("CARGO_BIN_EXE_asme"))
            .args(["agent", "stop"])
            .output()
            .unwrap();
        assert!(
            stop.status.success(),
            "asme agent stop: {}",
            String::from_utf8_lossy(&stop.stderr)
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/build.sh");
        let status = Command::new("bash")
            .arg(&script)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{} failed", script.display());
        // The users must reach the binary under test.
        let mut dir = Path::new(env!("CARGO_BIN_EXE_asme")).parent();
        while let Some(d) = dir {
            let mode = fs::metadata(d).unwrap().mode();
            assert!(
                mode & 0o001 != 0,
                "{} is not searchable by the test users",
                d.display()
            );
            dir = d.parent();
        }
    });
}

/// FUSE as distributions ship it: /dev/fuse 0666 (this VM has 0600) and `user_allow_other` in
/// /etc/fuse.conf, so that users can mount and docker can reach their mounts.
pub fn stock_fuse_host() {
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode_ext(0o666)).unwrap();
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !conf.lines().any(|l| l.trim() == "user_allow_other") {
        fs::write("/etc/fuse.conf", format!("{conf}user_allow_other\n")).unwrap();
    }
}

/// A user set up for rootless engines as a distribution does: subordinate ids (added if
/// useradd gave none) and the runtime folder a login would make.
pub fn rootless_user(user: &User) {
    let named = |file: &str| {
        fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{}:", user.name)))
    };
    if !named("/etc/subuid") || !named("/etc/subgid") {
        run_checked(Command::new("usermod").args([
            "--add-subuids",
            "524288-589823",
            "--add-subgids",
            "524288-589823",
            &user.name,
        ]));
    }
    let runtime = runtime_dir(user);
    fs::create_dir_all(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode_ext(0o700)).unwrap();
}

/// The user's runtime folder (XDG_RUNTIME_DIR).
pub fn runtime_dir(user: &User) -> String {
    format!("/run/user/{}", user.uid)
}

/// Makes sure a user with this uid exists (keeping an existing one) and is in the docker group.
fn ensure_user(uid: u32, name: &str) {
    if passwd_line(uid).is_none() {
        run_checked(Command::new("groupadd").args(["-g", &uid.to_string(), name]));
        run_checked(Command::new("useradd").args([
            "-m",
            "-u",
            &uid.to_string(),
            "-g",
            &uid.to_string(),
            "-s",
            "/bin/sh",
            name,
        ]));
    }
    let user = lookup_user(uid);
    run_checked(Command::new("usermod").args(["-aG", "docker", &user.name]));
    fs::create_dir_all(&user.home).unwrap();
    std::os::unix::fs::chown(&user.home, Some(uid), Some(user.gid)).unwrap();
}

fn passwd_line(uid: u32) -> Option<String> {
    fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').nth(2) == Some(&uid.to_string()))
        .map(str::to_string)
}

fn lookup_user(uid: u32) -> User {
    let line = passwd_line(uid).unwrap_or_else(|| panic!("no host user with uid {uid}"));
    let f: Vec<&str> = line.split(':').collect();
    User {
        name: f[0].into(),
        uid,
        gid: f[3].parse().unwrap(),
        home: f[5].into(),
    }
}

fn run_checked(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The local test image `asme-test/NAME`.
pub fn image(name: &str) -> String {
    setup();
    assert!(IMAGES.contains(&name), "unknown test image {name}");
    format!("asme-test/{name}")
}

/// A folder owned by `user`, removed when dropped.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(user: &User, label: &str) -> TestDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/asme-e2e/{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions("/tmp/asme-e2e", fs::Permissions::from_mode_ext(0o755)).unwrap();
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
        TestDir { path }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

trait ModeExt {
    fn from_mode_ext(mode: u32) -> Self;
}

impl ModeExt for fs::Permissions {
    fn from_mode_ext(mode: u32) -> Self {
        std::os::unix::fs::PermissionsExt::from_mode(mode)
    }
}

/// `asme ARGS` run as `user`, in `cwd`, with a clean environment like a login would give.
pub fn asme_as(user: &User, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = as_user(user, cwd);
    cmd.arg(env!("CARGO_BIN_EXE_asme")).args(args);
    cmd
}

/// Any program run as `user` (setpriv: real and effective ids, the user's groups).
pub fn as_user(user: &User, cwd: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={}", user.uid),
        &format!("--regid={}", user.gid),
        "--init-groups",
        "--",
    ]);
    cmd.env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(cwd)
        .stdin(Stdio::null());
    cmd
}

/// A finished command, with everything needed to explain a failure.
pub struct Run {
    pub cmd: String,
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(mut cmd: impl BorrowMut<Command>) -> Run {
        let cmd = cmd.borrow_mut();
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("spawning");
        Run {
            cmd: format!("{cmd:?}"),
            status: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    pub fn explain(&self) -> String {
        format!(
            "command: {}\nstatus: {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.status, Some(0), "expected success\n{}", self.explain());
        self.stdout
    }

    pub fn code(&self) -> Option<i32> {
        self.status
    }

    /// Asserts that asme said exactly one `notice` line on stderr, and that it holds `needle`.
    pub fn assert_one_notice(&self, needle: &str) {
        let notices: Vec<_> = self
            .stderr
            .lines()
            .filter(|l| l.contains("notice"))
            .collect();
        assert_eq!(notices.len(), 1, "{}", self.explain());
        assert!(notices[0].contains(needle), "{}", self.explain());
    }
}

/// Runs and requires success; returns stdout.
pub fn ok(cmd: impl BorrowMut<Command>) -> String {
    Run::of(cmd).ok()
}

/// Every entry under `dir` (not `dir` itself), with its owner, as lstat(2) reports it.
pub fn owners(dir: &Path) -> Vec<(PathBuf, u32, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta.uid(), meta.gid()));
        }
    }
    out.sort();
    out
}

/// Asserts that `dir` holds at least `min` entries and that every one belongs to `user`.
pub fn assert_all_owned(dir: &Path, user: &User, min: usize) {
    let all = owners(dir);
    assert!(
        all.len() >= min,
        "expected at least {min} entries under {}: {all:?}",
        dir.display()
    );
    let wrong: Vec<_> = all
        .iter()
        .filter(|(_, u, g)| (*u, *g) != (user.uid, user.gid))
        .collect();
    assert!(
        wrong.is_empty(),
        "not owned by {}:{}: {wrong:?}",
        user.uid,
        user.gid
    );
}

/// A unique container name, removed (with its container) when dropped.
pub struct ContainerName(pub String);

impl ContainerName {
    pub fn new(label: &str) -> ContainerName {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ContainerName(format!("asme-e2e-{label}-{}-{n}", std::process::id()))
    }
}

impl AsRef<OsStr> for ContainerName {
    fn as_ref(&self) -> &OsStr {
        self.0.as_ref()
    }
}

impl Drop for ContainerName {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

/// `docker ARGS` as root (for inspection and control from outside).
pub fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Starts `cmd` with stdout piped and returns once its first line is `first`, with the rest
/// of its output still to read: how a test knows the container is up, without sleeping.
pub fn spawn_until(
    mut cmd: impl BorrowMut<Command>,
    first: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut child = cmd
        .borrow_mut()
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reading the first line");
    assert_eq!(line.trim_end(), first, "unexpected first line");
    (child, out)
}

/// Kills an asme started by [`spawn_until`] outright (SIGKILL: nothing of asme's runs after
/// it) and removes the container it started.
pub fn kill_asme(mut child: std::process::Child, container: &ContainerName) {
    child.kill().unwrap();
    child.wait().unwrap();
    ok(docker(&["rm", "-f", "-v", &container.0]));
}

/// The agent folders (`/run/asme/engines/ID`) of engines whose agent is gone (no socket):
/// each dockerd of these tests has one, named after its socket, which asme leaves behind as
/// it leaves any engine's (a lock file and an empty leases folder, in /run).
pub fn remove_dead_agent_folders() {
    let Ok(entries) = fs::read_dir("/run/asme/engines") else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let leases_empty =
            fs::read_dir(dir.join("leases")).map_or(true, |mut l| l.next().is_none());
        if !dir.join("agent.sock").exists() && leases_empty {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

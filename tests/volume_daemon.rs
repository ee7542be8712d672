//! e2e: a container that `asme run` started with a restart policy keeps writing into the
//! user's folder as the user across a restart of the engine itself: dockerd (without
//! live-restore) stops it at shutdown and starts it again, volume of asme's driver included,
//! when it comes back. The engine restarted is a dockerd of the test's own (socket, data root,
//! exec root, bridge, and so the plugin's state), so restarting it leaves the main engine and
//! the tests using it alone. Also a daemon with `userns-remap` (issue 14): asme does no
//! worse there than plain docker. (dockerd itself creates the `dockremap` user and its
//! subordinate ids the first time, and leaves them.)

mod testenv;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use testenv::{Run, TestDir, User, as_user, asme_as, image, user1234};

/// Where the test's dockerds live, one folder `d<PID>` per test process. Short on purpose:
/// the exec root holds the plugin's socket at `<exec>/plugins/<64 hex>/asme.sock`, and a
/// unix socket path has at most 107 bytes.
const BASE: &str = "/tmp/asme-e2e";
/// The bridge of a test's dockerd is `asmed<PID>` (interface names have at most 15 bytes).
const BRIDGE: &str = "asmed";
/// How long dockerd may take to answer after it starts, or to stop.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);
/// How long the container may take to be running again after dockerd is back.
const RESTART_DEADLINE: Duration = Duration::from_secs(60);

/// A dockerd of the test's own, stopped and wiped (containers, plugin, mounts, bridge,
/// folder) when dropped.
struct Daemon {
    dir: PathBuf,
    bridge: String,
    child: Option<Child>,
}

impl Daemon {
    /// Clears what crashed earlier runs left, then starts a dockerd on a fresh folder and
    /// bridge and waits until it answers.
    fn start() -> Daemon {
        Daemon::start_with_config("{}")
    }

    /// [`Daemon::start`] with `config` as its daemon.json.
    fn start_with_config(config: &str) -> Daemon {
        clean_leftovers();
        let pid = std::process::id();
        let dir = PathBuf::from(format!("{BASE}/d{pid}"));
        remove(&dir, &format!("{BRIDGE}{pid}"));
        fs::create_dir_all(&dir).unwrap();
        // The test user reaches the socket through these.
        let open = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        fs::set_permissions(BASE, open).unwrap();
        // Its own configuration: a host's /etc/docker/daemon.json must not change this one.
        fs::write(dir.join("daemon.json"), config).unwrap();
        let mut daemon = Daemon {
            dir,
            bridge: format!("{BRIDGE}{pid}"),
            child: None,
        };
        let exec_root = daemon.exec_root();
        assert!(
            exec_root.len() + "/plugins/".len() + 64 + "/asme.sock".len() <= 107,
            "{exec_root} is too long for the plugin's socket path"
        );
        // Its own bridge, on a private /24 away from docker0's 172.17/16: the main engine's
        // docker0 is never touched.
        let address = format!("10.213.{}.1/24", pid % 256);
        for args in [
            &["link", "add", &daemon.bridge, "type", "bridge"][..],
            &["addr", "add", &address, "dev", &daemon.bridge],
            &["link", "set", &daemon.bridge, "up"],
        ] {
            let run = Run::of(Command::new("ip").args(args));
            assert_eq!(run.status, Some(0), "{}", run.explain());
        }
        daemon.spawn();
        daemon
    }

    fn exec_root(&self) -> String {
        format!("{}/x", self.dir.display())
    }

    /// The value of DOCKER_HOST (and `-H`) for this engine.
    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// dockerd's arguments, the same at every start. No live-restore: a restart stops the
    /// containers and starts those with a restart policy again, which is what is tested.
    fn args(&self) -> Vec<String> {
        let dir = self.dir.display();
        [
            format!("--host={}", self.host()),
            format!("--data-root={dir}/root"),
            format!("--exec-root={}", self.exec_root()),
            format!("--pidfile={dir}/docker.pid"),
            format!("--config-file={dir}/daemon.json"),
            format!("--bridge={}", self.bridge),
            "--iptables=false".into(),
            "--ip-masq=false".into(),
            "--live-restore=false".into(),
            "--group=docker".into(),
        ]
        .into()
    }

    /// Starts dockerd, logging into the folder, and waits until it answers.
    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dockerd ({e}): install docker.io, which provides it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + DAEMON_DEADLINE;
        loop {
            let exited = self.child.as_mut().map(Child::try_wait);
            if let Some(Ok(Some(status))) = exited {
                self.child = None;
                panic!("dockerd exited ({status}) before answering\n{}", self.log());
            }
            let info = Run::of(self.docker(&["info", "--format", "{{.ServerVersion}}"]));
            if info.status == Some(0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {DAEMON_DEADLINE:?}\n{}\n{}",
                info.explain(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, as a service manager stops it; SIGKILL after the deadline. True if it
    /// stopped by itself.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // Never signal a pid already reaped: it may be another process's by now.
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + DAEMON_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops dockerd, waits until its process is gone, and starts it again.
    fn restart(&mut self) {
        let stopped = self.stop();
        assert!(
            stopped,
            "dockerd did not stop within {DAEMON_DEADLINE:?}\n{}",
            self.log()
        );
        self.spawn();
    }

    /// `docker -H THIS ARGS` as root.
    fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &self.host()])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `docker ARGS` as `user`, on this engine through DOCKER_HOST.
    fn docker_as(&self, user: &User, args: &[&str]) -> Command {
        let mut cmd = as_user(user, &user.home);
        cmd.env("DOCKER_HOST", self.host()).arg("docker").args(args);
        cmd
    }

    /// `asme ARGS` as `user`, on this engine through DOCKER_HOST.
    fn asme_as(&self, user: &User, args: &[&str]) -> Command {
        let mut cmd = asme_as(user, &user.home, args);
        cmd.env("DOCKER_HOST", self.host());
        cmd
    }

    /// Runs `cmd`, requires success and returns stdout; a failure shows dockerd's log too.
    fn ok(&self, cmd: impl std::borrow::BorrowMut<Command>) -> String {
        let run = Run::of(cmd);
        assert_eq!(
            run.status,
            Some(0),
            "expected success\n{}\n{}",
            run.explain(),
            self.log()
        );
        run.stdout
    }

    /// Copies `image` from the main engine (where the harness builds it) into this one.
    fn load(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut load = self.docker(&["load", "-q"]);
        load.stdin(save.stdout.take().unwrap());
        let loaded = Run::of(load);
        let saved = save.wait_with_output().unwrap();
        assert!(
            saved.status.success(),
            "docker save {image}: {}",
            String::from_utf8_lossy(&saved.stderr)
        );
        assert_eq!(
            loaded.status,
            Some(0),
            "{}\n{}",
            loaded.explain(),
            self.log()
        );
    }

    /// Polls `check` (every 100 ms) until it says done; past `deadline`, fails with its last
    /// word on the state and dockerd's log.
    fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut() -> Result<(), String>,
    ) {
        let end = Instant::now() + deadline;
        loop {
            let state = match check() {
                Ok(()) => return,
                Err(state) => state,
            };
            assert!(
                Instant::now() < end,
                "waited {deadline:?} for {what}; last: {state}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of dockerd's log, for failure messages.
    fn log(&self) -> String {
        let log = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "--- own dockerd's log ({}), last lines\n{tail}\n---",
            self.dir.display()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            // What a failed test may have left in it; its folder goes below anyway, but
            // containers and the plugin hold mounts and processes.
            let ids = self.docker(&["ps", "-aq"]).output();
            let ids = ids.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for id in ids.unwrap_or_default().split_whitespace() {
                let _ = self.docker(&["rm", "-f", "-v", id]).output();
            }
            let _ = self.docker(&["volume", "prune", "-f"]).output();
            let _ = self.docker(&["plugin", "rm", "-f", "asme"]).output();
        }
        self.stop();
        // A dockerd killed after its deadline leaves its containerd and shims.
        stop_stale(&self.dir);
        remove(&self.dir, &self.bridge);
        testenv::remove_dead_agent_folders();
    }
}

/// Clears what earlier runs that could not clean up (killed outright) left: their dockerd,
/// containerd and shims, mounts, folder and bridge. A run still going (its PID is a test
/// binary of this file) keeps its own.
fn clean_leftovers() {
    let ours = std::process::id();
    let stale = |pid: u32| pid != ours && !is_this_test(pid);
    for entry in fs::read_dir(BASE).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('d').and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if stale(pid) {
            let dir = entry.path();
            stop_stale(&dir);
            remove(&dir, &format!("{BRIDGE}{pid}"));
        }
    }
    for entry in fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(BRIDGE)
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(stale) {
            let _ = Command::new("ip").args(["link", "del", &name]).output();
        }
    }
}

/// Whether `pid` is a running test binary of this file.
fn is_this_test(pid: u32) -> bool {
    fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        exe.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("volume_daemon-"))
    })
}

/// Stops the processes an earlier run's dockerd in `dir` left: dockerd and containerd by
/// their pidfiles (dockerd stops its containers on its way out), then any shim still
/// serving that containerd (its command line names the folder).
fn stop_stale(dir: &Path) {
    for (pidfile, comm) in [
        (dir.join("docker.pid"), "dockerd"),
        (dir.join("x/containerd/containerd.pid"), "containerd"),
    ] {
        let pid = fs::read_to_string(pidfile).ok();
        let Some(pid) = pid.and_then(|p| p.trim().parse::<u32>().ok()) else {
            continue;
        };
        terminate(pid, comm);
    }
    let needle = format!("{}/", dir.display());
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            terminate(pid, "containerd-shim");
        }
    }
}

/// SIGTERM to `pid` if its name starts with `comm`, then SIGKILL if it is still there after
/// the deadline. It is no child of ours: its name is checked again at every look, so a pid
/// reused meanwhile is never signalled.
fn terminate(pid: u32, comm: &str) {
    let named =
        || fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.starts_with(comm));
    let pid = Pid::from_raw(pid as i32);
    if !named() {
        return;
    }
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + DAEMON_DEADLINE;
    while named() {
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points at or under `dir`, as /proc/self/mountinfo lists them.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let prefix = format!("{dir}/");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| *point == dir || point.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Detaches every mount under `dir` (deepest first; lazily, as a busy one still goes), then
/// removes the folder, unless a mount is left: nothing is ever removed through a mount (the
/// driver's volumes are the user's folders). Deletes the bridge.
fn remove(dir: &Path, bridge: &str) {
    for _ in 0..5 {
        let mut points = mounts_under(dir);
        if points.is_empty() {
            break;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = rustix::mount::unmount(point.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        let _ = fs::remove_dir_all(dir);
    } else {
        eprintln!(
            "not removing {}: mounts left under it: {left:?}",
            dir.display()
        );
    }
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = Command::new("ip").args(["link", "del", bridge]).output();
    }
}

/// The file's lines, or none if it is not there yet.
fn lines(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Asserts `path` is owned by `user` on the host.
fn assert_owned(path: &Path, user: &User) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.gid()),
        (user.uid, user.gid),
        "{} on the host",
        path.display()
    );
}

/// Waits until container `name` runs and has written its `n`th line into `starts`.
fn started(daemon: &Daemon, name: &str, starts: &Path, n: usize) {
    daemon.wait_for(
        &format!("{name} running with {n} line(s) in starts"),
        RESTART_DEADLINE,
        || {
            let inspect = Run::of(daemon.docker(&["inspect", "-f", "{{.State.Status}}", name]));
            let status = inspect.stdout.trim();
            match lines(starts) {
                written if written == n && status == "running" => Ok(()),
                written => Err(format!(
                    "status {status:?} ({}), {written} line(s)",
                    inspect.stderr.trim()
                )),
            }
        },
    );
}

/// `asme -v run -d --restart=always --name NAME -v DIR:/w IMAGE_AND_COMMAND` as `user`;
/// asserts that /w became a volume of asme's driver.
fn run_detached(
    daemon: &Daemon,
    user: &User,
    name: &str,
    dir: &TestDir,
    image_and_command: &[&str],
) {
    let mount = format!("{}:/w", dir.path.display());
    let mut args = vec![
        "-v",
        "run",
        "-d",
        "--restart=always",
        "--name",
        name,
        "-v",
        &mount,
    ];
    args.extend(image_and_command);
    let run = Run::of(daemon.asme_as(user, &args));
    assert_eq!(run.status, Some(0), "{}\n{}", run.explain(), daemon.log());
    let format = "{{range .Mounts}}{{.Driver}} {{end}}";
    let drivers = daemon.ok(daemon.docker_as(user, &["inspect", "-f", format, name]));
    assert_eq!(
        drivers.trim(),
        "asme:latest",
        "/w is not a volume of asme's driver\n{}",
        run.explain()
    );
}

/// One own dockerd at a time: they share this process's folder and bridge names.
fn one_daemon() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_restart_policy_writes_as_the_owner_across_a_dockerd_restart() {
    let _one = one_daemon();
    let user = user1234();
    let busybox = image("busybox");
    let dir = TestDir::new(user, "volume-daemon");
    let mut daemon = Daemon::start();
    daemon.load(&busybox);
    let name = format!("asme-e2e-daemon-{}", std::process::id());

    daemon.ok(daemon.asme_as(user, &["plugin", "install"]));
    let script = "echo start >> /w/starts; exec sleep 600";
    run_detached(&daemon, user, &name, &dir, &[&busybox, "sh", "-c", script]);
    // This engine's agent is its own, not the main engine's.
    let agents = fs::read_dir("/run/asme/engines").map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("agent.sock").exists())
            .count()
    });
    assert!(
        agents >= 1,
        "no agent of this engine under /run/asme/engines"
    );
    // Its lease is no longer needed (the container is up, on a volume of the driver).
    daemon.ok(daemon.asme_as(user, &["agent", "stop"]));

    let starts = dir.join("starts");
    started(&daemon, &name, &starts, 1);
    assert_owned(&starts, user);

    daemon.restart();
    started(&daemon, &name, &starts, 2);
    assert_eq!(fs::read_to_string(&starts).unwrap(), "start\nstart\n");
    assert_owned(&starts, user);
    daemon.ok(daemon.docker_as(user, &["exec", &name, "touch", "/w/after-restart"]));
    assert_owned(&dir.join("after-restart"), user);
    // Root inside sees the owner's files as its own.
    let seen = daemon.ok(daemon.docker_as(user, &["exec", &name, "stat", "-c", "%u", "/w/starts"]));
    assert_eq!(seen, "0\n");

    daemon.ok(daemon.docker_as(user, &["rm", "-f", "-v", &name]));
    daemon.ok(daemon.asme_as(user, &["plugin", "uninstall"]));
    drop(daemon);
    assert!(
        dir.join("after-restart").exists(),
        "the folder lost its files"
    );
}

/// A userns-remap engine stores container ids as subordinate ids (root's as `dockremap`'s
/// first one, which a 0755 folder of the user's refuses): idmap names those host-side ids
/// (its agent runs with `--userns=host`), so root's writes are the user's (issue 14). The
/// strategies that cannot, and an `asme fix` that would need a container's root, are
/// refused in one line; the folder stays the user's.
#[test]
fn a_userns_remap_engine_writes_as_the_user_through_idmap() {
    let _one = one_daemon();
    let user = user1234();
    let busybox = image("busybox");
    let dir = TestDir::new(user, "engine-remap");
    let daemon = Daemon::start_with_config(r#"{"userns-remap": "default"}"#);
    daemon.load(&busybox);
    let mount = format!("{}:/w", dir.path.display());
    let script = "touch /w/f 2>/dev/null; echo $?";
    let run = |cmd: Command| Run::of(cmd);
    let plain = run(daemon.docker_as(
        user,
        &["run", "--rm", "-v", &mount, &busybox, "sh", "-c", script],
    ));
    let asme = run(daemon.asme_as(
        user,
        &["run", "--rm", "-v", &mount, &busybox, "sh", "-c", script],
    ));
    assert_eq!(
        plain.status,
        Some(0),
        "{}\n{}",
        plain.explain(),
        daemon.log()
    );
    assert_eq!(asme.status, Some(0), "{}\n{}", asme.explain(), daemon.log());
    assert_eq!(
        plain.stdout, "1\n",
        "plain: container root may not write there"
    );
    assert_eq!(asme.stdout, "0\n", "{}", asme.explain());
    let meta = fs::metadata(dir.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    fs::remove_file(dir.join("f")).unwrap();

    // An image whose USER is not root (stored as the subordinate base + 1000): its writes
    // are the user's too.
    let user1000 = image("user1000");
    daemon.load(&user1000);
    let as_1000 = run(daemon.asme_as(
        user,
        &[
            "run",
            "--rm",
            "-v",
            &mount,
            &user1000,
            "sh",
            "-c",
            "touch /w/u && id -u",
        ],
    ));
    assert_eq!(as_1000.status, Some(0), "{}", as_1000.explain());
    assert_eq!(as_1000.stdout, "1000\n");
    assert_owned(&dir.join("u"), user);
    fs::remove_file(dir.join("u")).unwrap();

    // Through `asme proxy` (the engine endpoint), a plain `docker run` of any client: its
    // bind mount becomes a volume of asme's driver, mapped the same way.
    let socket = dir.join("proxy.sock");
    let mut proxy = as_user(user, &dir.path);
    proxy
        .env("DOCKER_HOST", daemon.host())
        .arg(env!("CARGO_BIN_EXE_asme"))
        .args(["proxy", "--socket"])
        .arg(&socket);
    let (mut proxy, _out) =
        testenv::spawn_until(proxy, &format!("listening on {}", socket.display()));
    let mut client = as_user(user, &dir.path);
    client
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .arg("docker")
        .args(["run", "--rm", "-v", &mount, &busybox, "touch", "/w/p"]);
    let through = run(client);
    let _ = kill(Pid::from_raw(proxy.id() as i32), Signal::SIGTERM);
    let _ = proxy.wait();
    assert_eq!(
        through.status,
        Some(0),
        "{}\n{}",
        through.explain(),
        daemon.log()
    );
    assert_owned(&dir.join("p"), user);
    fs::remove_file(dir.join("p")).unwrap();

    // A container that outlives the run rides on the volume driver, which maps the same
    // host-side ids: what it writes is the user's at its first start and at docker start.
    let name = format!("asme-remap-{}", std::process::id());
    let twice = "echo start >> /w/g";
    let durable = run(daemon.asme_as(
        user,
        &[
            "-v", "run", "--name", &name, "-v", &mount, &busybox, "sh", "-c", twice,
        ],
    ));
    assert_eq!(
        durable.status,
        Some(0),
        "{}\n{}",
        durable.explain(),
        daemon.log()
    );
    assert!(
        daemon
            .ok(daemon.docker(&["inspect", "--format", "{{json .Mounts}}", &name]))
            .contains("\"Driver\":\"asme"),
        "the container's folder is not a volume of asme's driver\n{}",
        durable.explain()
    );
    daemon.ok(daemon.docker(&["start", "-a", &name]));
    assert_eq!(lines(&dir.join("g")), 2);
    assert_owned(&dir.join("g"), user);
    daemon.ok(daemon.docker(&["rm", "-v", &name]));
    fs::remove_file(dir.join("g")).unwrap();

    let fix = run(daemon.asme_as(
        user,
        &[
            "--strategy",
            "fix",
            "run",
            "--rm",
            "-v",
            &mount,
            &busybox,
            "true",
        ],
    ));
    assert_ne!(fix.status, Some(0), "{}", fix.explain());
    assert_eq!(fix.stderr.lines().count(), 1, "{}", fix.explain());
    assert!(fix.stderr.contains("userns-remap"), "{}", fix.explain());

    // A file of another id that only root could give back.
    let foreign = dir.join("foreign");
    fs::write(&foreign, "").unwrap();
    std::os::unix::fs::chown(&foreign, Some(999), Some(999)).unwrap();
    let fixed = run(daemon.asme_as(user, &["fix", &dir.path.display().to_string()]));
    assert_ne!(fixed.status, Some(0), "{}", fixed.explain());
    assert!(
        fixed.stderr.contains("sudo asme fix"),
        "{}",
        fixed.explain()
    );
    let owner = |p: &Path| {
        let meta = fs::metadata(p).unwrap();
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner(&foreign), (999, 999));
    assert_eq!(owner(&dir.path), (user.uid, user.gid));

    // doctor names the kind and what auto does there, and tries no strategy (containers
    // of its own would leave files of subordinate ids).
    let doctor =
        daemon.ok(daemon.asme_as(user, &["doctor", "--json", &dir.path.display().to_string()]));
    let report: serde_json::Value = serde_json::from_str(&doctor).unwrap();
    assert_eq!(report["engine"]["kind"], "userns-remap", "{doctor}");
    assert_eq!(report["auto"], "idmap", "{doctor}");
    drop(daemon);
}

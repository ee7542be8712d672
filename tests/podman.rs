//! e2e: `asme --engine podman` with rootless Podman (Debian's podman 4.3), as the ordinary
//! user it belongs to (issue 14). Rootless Podman already stores what container root writes
//! as the user, and other container users' writes as subordinate ids; asme's mappings name
//! container ids, so asme uses Podman's own answer: a root container runs as plain podman
//! would run it (with one notice), a non-root one gets `--userns=keep-id:uid=N,gid=G`.
//!
//! Set up as a distribution does: subordinate ids for the user (`usermod --add-subuids`),
//! the user's runtime folder, and the test images loaded from docker (`docker save | podman
//! load`). The network is `none`: slirp4netns needs /dev/net/tun, which is 0600 on some hosts.

mod testenv;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use testenv::{Run, TestDir, User, as_user, asme_as, image, ok, runtime_dir, user1234};

/// The user's rootless Podman, ready: subordinate ids, runtime folder, images.
fn podman_for(user: &User) {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is missing: apt-get install podman uidmap (bash .ci/run installs them)"
        );
        testenv::rootless_user(user);
        ok(podman_as(user, &["system", "migrate"]));
        for name in ["busybox", "user1000"] {
            load(user, &image(name));
        }
    });
}

/// `podman ARGS` as `user`, in their own runtime folder.
fn podman_as(user: &User, args: &[&str]) -> Command {
    let mut cmd = as_user(user, &user.home);
    cmd.env("XDG_RUNTIME_DIR", runtime_dir(user))
        .arg("podman")
        .args(args);
    cmd
}

/// `docker save IMAGE | podman load` as `user`.
fn load(user: &User, image: &str) {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut load = podman_as(user, &["load", "-q"]);
    load.stdin(save.stdout.take().unwrap());
    ok(load);
    assert!(save.wait().unwrap().success(), "docker save {image}");
}

/// Podman names a loaded image `localhost/NAME`.
fn local(name: &str) -> String {
    format!("localhost/{}", image(name))
}

/// `asme --engine podman ARGS` as `user`.
fn asme_podman(user: &User, cwd: &Path, args: &[&str]) -> Run {
    let mut cmd = asme_as(user, cwd, &[&["--engine", "podman"][..], args].concat());
    cmd.env("XDG_RUNTIME_DIR", runtime_dir(user));
    Run::of(cmd)
}

#[test]
fn rootless_podman_runs_as_plain_podman_would_and_root_writes_as_the_user() {
    let user = user1234();
    podman_for(user);
    let dir = TestDir::new(user, "podman-root");
    let mount = format!("{}:/w", dir.path.display());
    let busybox = local("busybox");
    let args = ["run", "--rm", "--network", "none", "-v", &mount, &busybox];
    let run = asme_podman(
        user,
        &dir.path,
        &[&args[..], &["sh", "-c", "touch /w/f; id -u"]].concat(),
    );
    // Root's writes are the user's there already: nothing to map, nothing to say.
    assert_eq!(run.stderr, "", "{}", run.explain());
    assert_eq!(run.ok(), "0\n");
    let meta = fs::metadata(dir.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));

    // doctor names the kind (from Podman itself) and tries the strategies for real.
    let path = dir.path.display().to_string();
    let doctor = asme_podman(user, &dir.path, &["doctor", "--json", &path]).ok();
    let report: serde_json::Value = serde_json::from_str(&doctor).unwrap();
    assert_eq!(report["engine"]["kind"], "podman-rootless", "{doctor}");
    assert_eq!(report["strategies"]["fuse"]["ok"], true, "{doctor}");
    assert_eq!(report["auto"], "rootless-fuse", "{doctor}");
}

/// asme's own mapping on rootless Podman (`--strategy fuse`, and auto for a program that
/// changes users): served in the user and mount namespaces of Podman's pause process, so
/// what the container's user writes, and what its root chowns to another user, stay the
/// user's; the mounts go with the run.
#[test]
fn rootless_podman_fuse_serves_in_podmans_namespaces() {
    let user = user1234();
    podman_for(user);
    let dir = TestDir::new(user, "podman-fuse");
    let mount = format!("{}:/w", dir.path.display());
    let run = |image: &str, script: &str| {
        let args = [
            "--strategy",
            "fuse",
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
        ];
        asme_podman(
            user,
            &dir.path,
            &[&args[..], &[image, "sh", "-c", script]].concat(),
        )
    };
    let as_1000 = run(
        &local("user1000"),
        "mkdir /w/d && touch /w/d/f && stat -c %u /w/d/f",
    );
    assert_eq!(as_1000.ok(), "1000\n");
    let chowned = run(
        &local("busybox"),
        "touch /w/db && chown 999:999 /w/db && stat -c %u /w/db",
    );
    assert_eq!(chowned.ok(), "999\n");
    for name in ["d", "d/f", "db"] {
        let meta = fs::metadata(dir.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{name}");
    }
    let pause = fs::read_to_string(format!("{}/libpod/tmp/pause.pid", runtime_dir(user))).unwrap();
    let mounts = fs::read_to_string(format!("/proc/{}/mountinfo", pause.trim())).unwrap();
    // Only this run's: Podman's namespaces copied whatever the host had mounted when its
    // pause process started.
    let ours = dir.path.to_str().unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains("fuse.asme") && l.contains(ours))
        .collect();
    assert!(left.is_empty(), "a mount outlived its run:\n{left:#?}");
}

/// An image whose USER is not root: plain rootless Podman stores its writes as a subordinate
/// id (and a 0755 folder of the user's refuses them); asme adds Podman's own
/// `--userns=keep-id:uid=N,gid=G`, so that user's writes are the user's.
#[test]
fn rootless_podman_with_a_user_image_writes_as_the_user() {
    let user = user1234();
    podman_for(user);
    let dir = TestDir::new(user, "podman-user");
    let mount = format!("{}:/w", dir.path.display());
    let image = local("user1000");
    let args_with = |script| {
        [
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &mount,
            &image,
            "sh",
            "-c",
            script,
        ]
    };
    let args = args_with("touch /w/f 2>/dev/null; echo $?; id -u");
    let plain = Run::of(podman_as(user, &args));
    assert_eq!(plain.ok(), "1\n1000\n", "plain rootless podman: EACCES");
    let asme = asme_podman(user, &dir.path, &args);
    assert_eq!(asme.ok(), "0\n1000\n");
    let meta = fs::metadata(dir.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    // The user strategy: the owner's account and HOME, made theirs by Podman's keep-id.
    let user_args = args_with("touch /w/user \"$HOME/x\" && id -un");
    let as_owner = asme_podman(
        user,
        &dir.path,
        &[&["--strategy", "user"][..], &user_args].concat(),
    );
    assert_eq!(as_owner.ok(), format!("{}\n", user.name));
    let meta = fs::metadata(dir.join("user")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    // Strategies that would store the user's files as subordinate ids: refused.
    let fix = asme_podman(
        user,
        &dir.path,
        &[&["--strategy", "fix"][..], &args].concat(),
    );
    assert_ne!(fix.status, Some(0), "{}", fix.explain());
    assert_eq!(fix.stderr.lines().count(), 1, "{}", fix.explain());
    let meta = fs::metadata(&dir.path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
}

/// Rootful Podman's Docker-compatible API (`podman system service`), with the docker CLI and
/// asme pointed at it through DOCKER_HOST: plain, what container root writes is host root's;
/// through asme, the idmap strategy's agent runs in Podman (an agent of its own, not the
/// default engine's) and the writes are the user's. The service is the test's own, with a
/// `containers.conf` of its own: Podman's default ulimits (nofile 1048576) exceed what some
/// hosts allow (this one's hard limit is 20000), and crun refuses hybrid cgroup hosts.
#[test]
fn rootful_podman_through_its_docker_api_writes_as_the_user() {
    let _store = root_store();
    let user = user1234();
    let service = PodmanService::start();
    let dir = TestDir::new(user, "podman-rootful");
    let mount = format!("{}:/w", dir.path.display());
    let busybox = local("busybox");
    let args = ["run", "--rm", "--network", "none", "-v", &mount, &busybox];
    let script = ["sh", "-c", "touch /w/plain; id -u"];
    let mut plain = as_user(user, &dir.path);
    plain
        .env("DOCKER_HOST", service.host())
        .arg("docker")
        .args(args)
        .args(script);
    assert_eq!(Run::of(plain).ok(), "0\n");
    let meta = fs::metadata(dir.join("plain")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "plain: host root's");

    let mut asme = asme_as(user, &dir.path, &args);
    asme.env("DOCKER_HOST", service.host())
        .args(["sh", "-c", "touch /w/asme; id -u"]);
    assert_eq!(Run::of(asme).ok(), "0\n");
    let meta = fs::metadata(dir.join("asme")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    let mut stop = asme_as(user, &dir.path, &["agent", "stop"]);
    stop.env("DOCKER_HOST", service.host());
    ok(stop);
    fs::remove_file(dir.join("plain")).unwrap();
}

/// One test at a time in root's Podman store: its agents share asme's image there, which
/// `asme agent stop` removes.
fn root_store() -> std::sync::MutexGuard<'static, ()> {
    static STORE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    STORE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `containers.conf` for root's Podman in `dir`: Podman's default ulimits (nofile 1048576)
/// exceed what some hosts allow (this one's hard limit is 20000), and crun refuses hybrid
/// cgroup hosts.
fn rootful_conf(dir: &Path) -> std::path::PathBuf {
    let conf = dir.join("containers.conf");
    fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    conf
}

/// The busybox test image, in root's Podman store.
fn load_for_root(conf: &Path) {
    let mut save = Command::new("docker")
        .args(["save", &image("busybox")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut load = Command::new("podman");
    load.env("CONTAINERS_CONF", conf)
        .args(["load", "-q"])
        .stdin(save.stdout.take().unwrap());
    ok(load);
    assert!(save.wait().unwrap().success());
}

/// `sudo asme --engine podman run`: root's own Podman CLI, for the user who ran sudo. The
/// idmap strategy's agent runs in Podman under a name of its own (the store is shared with
/// Podman's service, whose agent is another), and the user strategy's HOME is a tmpfs given
/// to the user Podman's way (`U`: Podman's --tmpfs takes no uid=).
#[test]
fn rootful_podman_cli_under_sudo_writes_as_the_user() {
    let _store = root_store();
    let user = user1234();
    let dir = TestDir::new(user, "podman-sudo");
    let conf = rootful_conf(&dir.path);
    load_for_root(&conf);
    let mount = format!("{}:/w", dir.path.display());
    let sudo = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_asme"));
        cmd.current_dir(&dir.path)
            .env("CONTAINERS_CONF", &conf)
            .env("SUDO_UID", user.uid.to_string())
            .env("SUDO_GID", user.gid.to_string())
            .env("SUDO_USER", &user.name)
            .arg("--engine")
            .arg("podman")
            .args(args)
            .stdin(Stdio::null());
        Run::of(cmd)
    };
    let run = |strategy: &str, script: &str| {
        let args = [
            "--strategy",
            strategy,
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
        ];
        sudo(&[&args[..], &[&mount, &local("busybox"), "sh", "-c", script]].concat())
    };
    assert_eq!(run("idmap", "touch /w/idmap; id -u").ok(), "0\n");
    let home = "touch /w/user; id -u; touch \"$HOME/x\" && echo $HOME";
    let expected = format!("{}\n{}\n", user.uid, user.home.display());
    assert_eq!(run("user", home).ok(), expected);
    for name in ["idmap", "user"] {
        let meta = fs::metadata(dir.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{name}");
    }
    sudo(&["agent", "stop"]).ok();
    fs::remove_file(dir.join("containers.conf")).unwrap();
}

/// `podman system service` as root on a socket of the test's own (group docker, 0660), with
/// its own configuration; stopped when dropped.
struct PodmanService {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl PodmanService {
    fn start() -> PodmanService {
        let dir = std::path::PathBuf::from(format!("/tmp/asme-e2e/podman-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let conf = rootful_conf(&dir);
        let socket = dir.join("podman.sock");
        // Podman's compatible API keeps what `docker import -` sends it in a temporary file it
        // never removes (`api_load.tar*`, 70 MB for asme's agent image): in the test's folder,
        // which goes with it.
        let tmp = dir.join("tmp");
        fs::create_dir(&tmp).unwrap();
        let child = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .env("TMPDIR", &tmp)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service (apt-get install podman)");
        let service = PodmanService { dir, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "podman system service did not listen on {}",
                socket.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        ok(Command::new("chgrp").arg("docker").arg(&socket));
        fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
        load_for_root(&conf);
        service
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("podman.sock").display())
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        // The agent of this engine, if the test did not get to stop it.
        let _ = Command::new(env!("CARGO_BIN_EXE_asme"))
            .env("DOCKER_HOST", self.host())
            .args(["agent", "stop"])
            .output();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
        testenv::remove_dead_agent_folders();
    }
}

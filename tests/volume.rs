//! e2e: the volume driver (`asme plugin install`, `docker volume create -d asme`), as an
//! ordinary user on the real engine: what a root container writes lands as the owner, and
//! keeps doing so when docker alone starts the container again.

mod testenv;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use testenv::{ContainerName, Run, TestDir, User, as_user, asme_as, image, ok, user1234};

/// The tests share the one plugin `asme`: one at a time.
fn plugin() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `docker ARGS` as `user`.
fn docker_as(user: &User, dir: &Path, args: &[&str]) -> Run {
    let mut cmd = as_user(user, dir);
    cmd.arg("docker").args(args);
    Run::of(cmd)
}

/// A volume of the driver, removed when dropped (its folder is the test's).
struct Volume<'u> {
    name: String,
    user: &'u User,
}

impl<'u> Volume<'u> {
    fn create(user: &'u User, label: &str, opts: &[&str]) -> Volume<'u> {
        let name = format!("asme-test-{label}-{}", std::process::id());
        create(user, &name, opts).ok();
        Volume { name, user }
    }
}

/// `docker volume create -d asme -o OPT... NAME` as `user`.
fn create(user: &User, name: &str, opts: &[&str]) -> Run {
    let mut args = vec!["volume", "create", "-d", "asme"];
    for opt in opts {
        args.extend(["-o", opt]);
    }
    args.push(name);
    docker_as(user, &user.home, &args)
}

/// `docker run [FLAGS] -v MOUNT busybox sh -c SCRIPT` as `user`.
fn sh(user: &User, flags: &[&str], mount: &str, script: &str) -> Run {
    let busybox = image("busybox");
    let mut args = vec!["run"];
    args.extend(flags);
    args.extend(["-v", mount, &busybox, "sh", "-c", script]);
    docker_as(user, &user.home, &args)
}

impl Drop for Volume<'_> {
    fn drop(&mut self) {
        let _ = docker_as(
            self.user,
            &self.user.home,
            &["volume", "rm", "-f", &self.name],
        );
    }
}

/// The plugin, this build's, installed and held for one test; and the test user.
fn installed() -> (MutexGuard<'static, ()>, &'static User) {
    let lock = plugin();
    let user = user1234();
    install(user);
    (lock, user)
}

/// A volume over a fresh folder of `user`'s: the folder, the volume, and its `-v` value.
fn volume_over<'u>(user: &'u User, label: &str) -> (TestDir, Volume<'u>, String) {
    let dir = TestDir::new(user, &format!("volume-{label}"));
    let volume = Volume::create(user, label, &[&format!("source={}", dir.path.display())]);
    let mount = format!("{}:/w", volume.name);
    (dir, volume, mount)
}

/// How the driver serves a mounted volume (`Status.Mapping` of `docker volume inspect`).
fn mapping_of(user: &User, volume: &Volume) -> String {
    let format = "{{.Status.Mapping}}";
    docker_as(
        user,
        &user.home,
        &["volume", "inspect", "-f", format, &volume.name],
    )
    .ok()
}

fn install(user: &User) {
    ok(asme_as(user, &user.home, &["plugin", "install"]));
    let status = ok(asme_as(user, &user.home, &["plugin", "status"]));
    assert_eq!(status.trim(), "installed and enabled");
}

#[test]
fn root_writes_land_as_the_owner_across_restarts() {
    let (_plugin, user) = installed();
    let (dir, volume, mount) = volume_over(user, "data");

    // Two containers at once, both root inside, both writing as the owner.
    let name = ContainerName::new("volume-long");
    sh(user, &["-d", "--name", &name.0], &mount, "sleep 600").ok();
    assert_eq!(mapping_of(user, &volume), "idmap\n");
    let run = sh(user, &["--rm"], &mount, "id -u; mkdir /w/d; touch /w/d/f");
    assert_eq!(run.ok(), "0\n");
    ok(as_user(user, &dir.path).args(["docker", "exec", &name.0, "touch", "/w/from-exec"]));
    for entry in ["d", "d/f", "from-exec"] {
        let meta = fs::symlink_metadata(dir.join(entry)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{entry}");
    }
    // The owner's files look like root's inside.
    let seen = sh(user, &["--rm"], &mount, "stat -c %u:%g /w/d/f");
    assert_eq!(seen.ok(), "0:0\n");

    // Started again by docker alone, a container keeps its mapping.
    let again = ContainerName::new("volume-again");
    sh(user, &["--name", &again.0], &mount, "echo run >> /w/log").ok();
    docker_as(user, &dir.path, &["start", "-a", &again.0]).ok();
    assert_eq!(fs::read_to_string(dir.join("log")).unwrap(), "run\nrun\n");
    let meta = fs::metadata(dir.join("log")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));

    // Removing the volume never touches its folder.
    drop(name);
    drop(again);
    drop(volume);
    assert!(dir.join("d/f").exists() && dir.join("log").exists());
}

#[test]
fn bad_options_are_refused_in_one_line_and_leave_no_volume() {
    let (_plugin, user) = installed();
    let dir = TestDir::new(user, "volume-bad");
    let missing = format!("source={}/missing", dir.path.display());
    let cases: &[(&[&str], &str)] = &[
        (&[], "missing option source"),
        (&["source=relative/dir"], "relative"),
        (&[&missing, "uid=0"], "missing"),
        (&["source=/tmp", "bogus=1"], "unknown option 'bogus'"),
        (&["source=/tmp", "uid=x"], "uid"),
        (&["source=/tmp", "owner=bob"], "invalid owner 'bob'"),
    ];
    for (i, (opts, needle)) in cases.iter().enumerate() {
        let name = format!("asme-test-bad-{i}-{}", std::process::id());
        let run = create(user, &name, opts);
        assert_ne!(run.code(), Some(0), "{}", run.explain());
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.explain());
        assert!(run.stderr.contains(needle), "{}", run.explain());
        let left = docker_as(user, &dir.path, &["volume", "inspect", &name]);
        assert_ne!(
            left.code(),
            Some(0),
            "volume {name} was left: {}",
            left.stdout
        );
    }
}

/// The plugin killed outright (SIGKILL) while a container uses a volume: dockerd restarts it,
/// the running container keeps its mapping, a new container mounts the volume, and once both
/// are gone no mount of the volume is left on the host.
#[test]
fn a_killed_plugin_comes_back_with_its_volumes() {
    let (_plugin, user) = installed();
    let (dir, volume, mount) = volume_over(user, "kill");
    let name = ContainerName::new("volume-kill");
    sh(user, &["-d", "--name", &name.0], &mount, "sleep 600").ok();

    let served = || {
        std::process::Command::new("pgrep")
            .args(["-f", "^/asme plugin serve"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let before = served();
    assert!(!before.is_empty(), "no plugin process found");
    ok(std::process::Command::new("kill").args(["-KILL", &before]));
    // dockerd restarts it (about 4 s here); poll with a deadline until a new one answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = served();
        let answers = !now.is_empty()
            && now != before
            && docker_as(user, &user.home, &["volume", "inspect", &volume.name]).code() == Some(0);
        if answers {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    ok(as_user(user, &dir.path).args(["docker", "exec", &name.0, "touch", "/w/after-kill"]));
    let run = sh(
        user,
        &["--rm"],
        &mount,
        "touch /w/new-container; stat -c %u /w/after-kill",
    );
    assert_eq!(run.ok(), "0\n");
    for entry in ["after-kill", "new-container"] {
        let meta = fs::metadata(dir.join(entry)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{entry}");
    }
    drop(name);
    let left = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("/propagated-mount/{} ", volume.name)))
        .count();
    assert_eq!(left, 0, "a mount of {} was left on the host", volume.name);
}

/// A folder on a filesystem that refuses idmapped mounts (FUSE: bindfs, mounted after the
/// plugin started) is served by asme's FUSE mapping instead: root inside, its writes the
/// owner's, again after `docker restart`, and no mount left after.
#[test]
fn a_folder_that_refuses_idmap_is_served_by_fuse() {
    let (_plugin, user) = installed();
    let backing = TestDir::new(user, "volume-fuse-src");
    let folder = TestDir::new(user, "volume-fuse-mnt");
    ok(std::process::Command::new("bindfs")
        .arg(&backing.path)
        .arg(&folder.path));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&folder.path);
    let volume = Volume::create(
        user,
        "fuse",
        &[&format!("source={}", folder.path.display())],
    );
    let mount = format!("{}:/w", volume.name);

    // Kept running, and restarted by docker: a new Mount, so a new FUSE server.
    let name = ContainerName::new("volume-fuse");
    sh(user, &["-d", "--name", &name.0], &mount, "exec sleep 600").ok();
    assert_eq!(mapping_of(user, &volume), "fuse\n");
    let write = [
        "exec",
        &name.0,
        "sh",
        "-c",
        "echo run >> /w/log; stat -c %u:%g /w/log",
    ];
    assert_eq!(docker_as(user, &user.home, &write).ok(), "0:0\n");
    docker_as(user, &user.home, &["restart", "-t", "0", &name.0]).ok();
    assert_eq!(docker_as(user, &user.home, &write).ok(), "0:0\n");
    assert_eq!(
        fs::read_to_string(backing.join("log")).unwrap(),
        "run\nrun\n"
    );
    let meta = fs::metadata(backing.join("log")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));

    drop(name);
    let served = format!("/propagated-mount/{} ", volume.name);
    let left = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&served))
        .count();
    assert_eq!(left, 0, "a mount of {} was left on the host", volume.name);
}

/// `asme --strategy fuse run` without `--rm`: the container can outlive the run, so its bind
/// mount is a volume of the driver, served by FUSE as the strategy asks (`mapping=fuse`),
/// and `docker start` keeps writing as the owner.
#[test]
fn asme_run_with_the_fuse_strategy_rides_on_the_driver() {
    let (_plugin, user) = installed();
    let dir = TestDir::new(user, "volume-fuse-run");
    let name = ContainerName::new("volume-fuse-run");
    let mount = format!("{}:/w", dir.path.display());
    let script = "echo run >> /w/log; id -u";
    let busybox = image("busybox");
    let args = [
        "--strategy",
        "fuse",
        "run",
        "--name",
        &name.0,
        "-v",
        &mount,
        &busybox,
    ];
    let run = Run::of(asme_as(
        user,
        &dir.path,
        &[&args[..], &["sh", "-c", script]].concat(),
    ));
    assert_eq!(run.ok(), "0\n");
    let format = "{{range .Mounts}}{{.Name}}{{end}}";
    // Its anonymous volume goes with it (`docker rm -v` when `name` drops).
    let volume = docker_as(user, &dir.path, &["inspect", "-f", format, &name.0]).ok();
    let volume = volume.trim();
    docker_as(user, &dir.path, &["start", "-a", &name.0]).ok();
    let format = "{{.Status.Mapping}} {{index .Options \"mapping\"}}";
    let inspected = docker_as(
        user,
        &dir.path,
        &["volume", "inspect", "-f", format, volume],
    );
    // Not mounted now (the container stopped): no Mapping, the option as asked.
    assert_eq!(inspected.ok(), "<no value> fuse\n");
    assert_eq!(fs::read_to_string(dir.join("log")).unwrap(), "run\nrun\n");
    let meta = fs::metadata(dir.join("log")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
}

/// Compose (Debian's docker-compose): a service whose volume uses the driver writes into the
/// user's folder as the user, and `down -v` removes the volume, never the folder.
#[test]
fn compose_writes_as_the_owner() {
    let (_plugin, user) = installed();
    let dir = TestDir::new(user, "volume-compose");
    fs::create_dir(dir.join("data")).unwrap();
    std::os::unix::fs::chown(dir.join("data"), Some(user.uid), Some(user.gid)).unwrap();
    // The example, with the test's image (nothing is pulled here).
    let example = fs::read_to_string("examples/compose/docker-compose.yml").unwrap();
    let file = example.replace("image: busybox", &format!("image: {}", image("busybox")));
    fs::write(dir.join("docker-compose.yml"), file).unwrap();
    let project = format!("asmetest{}", std::process::id());
    let compose = |args: &[&str]| {
        let mut cmd = as_user(user, &dir.path);
        cmd.env("PWD", &dir.path)
            .args(["docker-compose", "--no-ansi", "-p", &project])
            .args(args);
        Run::of(cmd)
    };
    let up = compose(&["up", "--abort-on-container-exit"]);
    let down = compose(&["down", "-v"]);
    up.ok();
    down.ok();
    let meta = fs::metadata(dir.join("data/log")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    let left = docker_as(
        user,
        &dir.path,
        &["volume", "inspect", &format!("{project}_data")],
    );
    assert_ne!(left.code(), Some(0), "the volume was left");
}

/// A single-node swarm service whose task mounts a volume of the driver writes into the
/// user's folder as the user.
#[test]
fn a_swarm_service_writes_as_the_owner() {
    let (_plugin, user) = installed();
    let _swarm = Swarm::join();
    let dir = TestDir::new(user, "volume-swarm");
    let service = format!("asme-test-swarm-{}", std::process::id());
    let mount = format!(
        "type=volume,dst=/w,volume-driver=asme,volume-opt=source={}",
        dir.path.display()
    );
    let busybox = image("busybox");
    let args = [
        "service",
        "create",
        "--detach",
        "--restart-condition",
        "none",
        "--name",
        &service,
        "--mount",
        &mount,
        &busybox,
        "sh",
        "-c",
        "echo swarm >> /w/log",
    ];
    docker_as(user, &dir.path, &args).ok();
    let log = dir.join("log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !log.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service's task wrote nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let meta = fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    docker_as(user, &dir.path, &["service", "rm", &service]).ok();
    remove_volumes_of(user, &dir.path);

    // Through `asme proxy`, a plain bind mount of the user's folder: the proxy makes it a
    // volume of the driver in the service's task template.
    let dir = TestDir::new(user, "volume-swarm-proxy");
    let socket = dir.join("docker.sock");
    let (mut proxy, _) = testenv::spawn_until(
        asme_as(
            user,
            &dir.path,
            &["proxy", "--socket", &socket.display().to_string()],
        ),
        &format!("listening on {}", socket.display()),
    );
    let bind = format!("type=bind,src={},dst=/w", dir.path.display());
    let host = format!("unix://{}", socket.display());
    let mut create = as_user(user, &dir.path);
    create.env("DOCKER_HOST", &host).arg("docker");
    create.args(&args[..7]).args([
        "--mount",
        &bind,
        &busybox,
        "sh",
        "-c",
        "echo swarm >> /w/log",
    ]);
    let created = Run::of(create);
    let log = dir.join("log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while created.status == Some(0) && !log.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service's task wrote nothing through the proxy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = docker_as(user, &dir.path, &["service", "rm", &service]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = proxy.wait();
    created.ok();
    let meta = fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    remove_volumes_of(user, &dir.path);
}

/// Removes the driver's volumes over `folder` (a swarm task's anonymous volume outlives its
/// service), once no container holds them.
fn remove_volumes_of(user: &User, folder: &Path) {
    let source = folder.display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ids = docker_as(
            user,
            folder,
            &["volume", "ls", "-q", "--filter", "driver=asme:latest"],
        );
        let ours: Vec<String> = ids
            .stdout
            .split_whitespace()
            .filter(|id| {
                let format = "{{.Options.source}}";
                let inspect = docker_as(user, folder, &["volume", "inspect", "-f", format, id]);
                inspect.stdout.trim() == source
            })
            .map(str::to_string)
            .collect();
        if ours.is_empty() {
            return;
        }
        for id in &ours {
            let _ = docker_as(user, folder, &["volume", "rm", id]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "volumes left: {ours:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// This engine as a single-node swarm for the test; it leaves again only if it was not one
/// before.
struct Swarm {
    joined: bool,
}

impl Swarm {
    fn join() -> Swarm {
        let state = ok(testenv::docker(&[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}}",
        ]));
        if state.trim() == "active" {
            return Swarm { joined: false };
        }
        ok(testenv::docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1",
        ]));
        Swarm { joined: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.joined {
            let _ = testenv::docker(&["swarm", "leave", "--force"]).output();
        }
    }
}

/// The driver's volumes outlive the plugin itself: removed and installed again (as an
/// upgrade to a new asme build does), it still serves them.
#[test]
fn volumes_outlive_a_reinstall() {
    let (_plugin, user) = installed();
    let (dir, _volume, mount) = volume_over(user, "reinstall");
    ok(asme_as(user, &user.home, &["plugin", "uninstall"]));
    let status = ok(asme_as(user, &user.home, &["plugin", "status"]));
    assert!(status.starts_with("not installed"), "{status}");
    install(user);
    sh(user, &["--rm"], &mount, "touch /w/after").ok();
    let meta = fs::metadata(dir.join("after")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
}

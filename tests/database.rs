//! e2e: a database container in the user's folder (issue 12). The entrypoint of
//! asme-test/postgres, like the official image's, runs as root, `chown -R`s its data folder
//! to the service user postgres and drops to it; postgres then initialises and serves the
//! data. Inside, the folder is postgres's; on the host every file stays the user's, so the
//! user can copy and delete it. Through `asme run` (auto picks fuse: the entrypoint changes
//! users), through a volume of the driver with `-o mapping=fuse`, and on a user's sshfs share
//! (no `user.` attributes there: the owners are recorded beside the data).

mod testenv;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use testenv::share::Share;
use testenv::{ContainerName, Run, TestDir, User, as_user, asme_as, image, ok, owners, user1234};

/// The image's data folder (`PGDATA`).
const PGDATA: &str = "/var/lib/postgresql/data";

/// How long a server may take to accept connections (about 2 s with plain docker).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// `docker ARGS` as `user`.
fn docker_as(user: &User, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = as_user(user, cwd);
    cmd.arg("docker").args(args);
    cmd
}

/// The state of container `name` (`docker inspect`'s `.State.Status`), `None` once it is gone.
fn state(user: &User, name: &str) -> Option<String> {
    let format = "{{.State.Status}}";
    let run = Run::of(docker_as(
        user,
        &user.home,
        &["inspect", "-f", format, name],
    ));
    (run.status == Some(0)).then(|| run.stdout.trim().to_string())
}

/// Keeps the whole output of container `name` in a file, from before the container exists
/// until it has ended: a `--rm` container that dies takes its logs with it, often within
/// milliseconds (an entrypoint that fails), so `docker logs` after the fact is too late.
///
/// A thread runs `docker logs -f NAME` again and again, every 10 ms while the container does
/// not exist yet, and again when one ends with the container still created or running (a
/// created container's logs end at once). Each run prints everything from the start, so
/// each complete one replaces the file. The thread ends once a run completed after the
/// container ended, when the container is gone after it was seen, or when told to.
struct Follower {
    log: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    fn start(user: &User, name: &str, log: PathBuf) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (user, name, log, stop) =
                (user.clone(), name.to_string(), log.clone(), stop.clone());
            std::thread::spawn(move || follow(&user, &name, &log, &stop))
        };
        Follower {
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether the thread has ended (so the file is complete).
    fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits up to `within` for the thread to end by itself.
    fn wait(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.ended() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn read(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn follow(user: &User, name: &str, log: &Path, stop: &AtomicBool) {
    let partial = log.with_extension("partial");
    let mut seen = false;
    while !stop.load(Ordering::Relaxed) {
        let file = fs::File::create(&partial).unwrap();
        let mut child = docker_as(user, &user.home, &["logs", "-f", name])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawning docker logs -f");
        let status = loop {
            if stop.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if status.success() {
            seen = true;
            fs::rename(&partial, log).unwrap();
            match state(user, name).as_deref() {
                Some("created" | "running" | "restarting") => {}
                _ => return,
            }
        } else if seen {
            return;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A postgres container, its output kept by a [`Follower`].
struct Server<'u> {
    user: &'u User,
    follower: Follower,
    /// Declared last: the container is removed after the follower has stopped.
    name: ContainerName,
}

impl<'u> Server<'u> {
    /// Starts a container named after `label` with `start` (given the name; it must return
    /// once the container runs, as `run -d` does), its log kept under `logs`.
    fn start(
        user: &'u User,
        label: &str,
        logs: &Path,
        start: impl FnOnce(&str) -> Run,
    ) -> Server<'u> {
        let name = ContainerName::new(label);
        let log = logs.join(format!("{}.log", name.0));
        let follower = Follower::start(user, &name.0, log);
        let started = start(&name.0);
        let server = Server {
            user,
            follower,
            name,
        };
        assert_eq!(
            started.status,
            Some(0),
            "starting the container failed\n{}\n{}",
            started.explain(),
            server.logs()
        );
        server
    }

    /// What the container said, and its state, for failure messages. A container that is no
    /// longer running has said everything: its log is waited for (a few seconds at most).
    fn logs(&self) -> String {
        let format = "{{.State.Status}}, exit code {{.State.ExitCode}}";
        let inspect = ["inspect", "-f", format, &self.name.0];
        let state = Run::of(docker_as(self.user, &self.user.home, &inspect));
        let state = if state.status == Some(0) {
            state.stdout.trim().to_string()
        } else {
            format!("gone: {}", state.stderr.trim())
        };
        if !state.starts_with("running") {
            self.follower.wait(Duration::from_secs(5));
        }
        format!(
            "--- docker logs {} (container {state})\n{}---",
            self.name.0,
            self.follower.read()
        )
    }

    /// `docker exec [FLAGS] NAME ARGS...` as the user.
    fn exec(&self, flags: &[&str], args: &[&str]) -> Run {
        let mut argv = vec!["exec"];
        argv.extend_from_slice(flags);
        argv.push(&self.name.0);
        argv.extend_from_slice(args);
        Run::of(docker_as(self.user, &self.user.home, &argv))
    }

    /// Like [`Server::exec`], required to succeed; returns stdout.
    fn exec_ok(&self, flags: &[&str], args: &[&str]) -> String {
        let run = self.exec(flags, args);
        assert_eq!(run.status, Some(0), "{}\n{}", run.explain(), self.logs());
        run.stdout
    }

    /// `psql -c SQL` as postgres on the unix socket in /tmp; unaligned, tuples only.
    fn psql(&self, sql: &str) -> String {
        let psql = [
            "psql",
            "-h",
            "/tmp",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ];
        self.exec_ok(&["-u", "postgres"], &psql)
    }

    /// Polls `pg_isready` until the server accepts connections; fails at once, with the
    /// logs, if the container is no longer running.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let run = self.exec(&[], &["pg_isready", "-h", "/tmp"]);
            if run.status == Some(0) {
                return;
            }
            let gone =
                run.stderr.contains("No such container") || run.stderr.contains("not running");
            assert!(
                !gone,
                "the container stopped before postgres accepted connections\n{}\n{}",
                run.explain(),
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within {READY_WITHIN:?}\n{}\n{}",
                run.explain(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `docker stop` (postgres shuts down cleanly), then the container is removed.
    fn stop(self) {
        let stop = Run::of(docker_as(
            self.user,
            &self.user.home,
            &["stop", &self.name.0],
        ));
        assert_eq!(stop.status, Some(0), "{}\n{}", stop.explain(), self.logs());
        // The follower ends with the container: its log is complete.
        let ended = self.follower.wait(Duration::from_secs(30));
        assert!(ended, "the log of {} did not end", self.name.0);
        let log = self.follower.read();
        assert!(
            log.contains("database system is shut down"),
            "postgres did not shut down cleanly\n{}",
            self.logs()
        );
    }
}

/// The scenario over `data`, a folder of `user`'s under `dir` (also the user's): a first
/// container initialises the database and writes a row, a second one reads it back; each is
/// started by `start` (given its name). Then, on the host, everything under `dir` is the
/// user's, and the user copies the data folder and deletes it.
fn database_keeps_its_data_as_the_owner(
    user: &User,
    dir: &TestDir,
    data: &Path,
    start: impl Fn(&str) -> Run,
) {
    let logs = TestDir::new(user, "database-logs");

    let first = Server::start(user, "database-first", &logs.path, &start);
    first.wait_ready();
    first.psql("create table t(x int); insert into t values (42);");
    // Inside, the folder is postgres's, as the entrypoint made it.
    let stat = ["stat", "-c", "%U:%G %a", PGDATA];
    assert_eq!(first.exec_ok(&[], &stat), "postgres:postgres 700\n");
    first.stop();

    let second = Server::start(user, "database-second", &logs.path, &start);
    second.wait_ready();
    assert_eq!(second.psql("select x from t"), "42\n");
    assert_eq!(second.exec_ok(&[], &stat), "postgres:postgres 700\n");
    second.stop();

    // On the host, all of it is the user's: the folder, PG_VERSION, base/..., pg_wal/...
    assert!(
        data.join("PG_VERSION").exists(),
        "no PG_VERSION in {data:?}"
    );
    assert_all_owned(&dir.path, user);
    // So the user can copy it whole (every file is readable: 0600, the user's) ...
    let copy = TestDir::new(user, "database-copy");
    let copied = copy.join("data");
    ok(as_user(user, &dir.path)
        .arg("cp")
        .arg("-a")
        .arg(data)
        .arg(&copied));
    let count = |root: &Path| owners(root).len();
    assert_eq!(count(&copied), count(data), "cp -a copied part of {data:?}");
    assert_all_owned(&copy.path, user);
    // ... and delete it.
    ok(as_user(user, &dir.path).arg("rm").arg("-rf").arg(data));
    assert!(!data.exists(), "rm -rf left {data:?}");
    let meta = fs::symlink_metadata(&dir.path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
}

/// Asserts that `dir` holds at least 100 entries (a database) and that every one belongs to
/// `user`; a failure says how many do not, whose they are, and names a few (a database has
/// about a thousand files).
fn assert_all_owned(dir: &Path, user: &User) {
    let all = owners(dir);
    assert!(
        all.len() >= 100,
        "expected a database under {}: {all:?}",
        dir.display()
    );
    let wrong: Vec<_> = all
        .iter()
        .filter(|(_, u, g)| (*u, *g) != (user.uid, user.gid))
        .collect();
    let mut whose = std::collections::BTreeMap::new();
    for (_, u, g) in &wrong {
        *whose.entry(format!("{u}:{g}")).or_insert(0) += 1;
    }
    let some: Vec<_> = wrong.iter().take(10).map(|(p, _, _)| p).collect();
    assert!(
        wrong.is_empty(),
        "{} of the {} entries under {} are not owned by {}:{} (owners and counts: {whose:?}); \
         the first: {some:?}",
        wrong.len(),
        all.len(),
        dir.display(),
        user.uid,
        user.gid
    );
}

/// A fresh folder of `user`'s, `pgdata`, made by the user in a test folder: the data folder.
fn data_folder(user: &User, label: &str) -> (TestDir, PathBuf) {
    let dir = TestDir::new(user, label);
    let data = dir.join("pgdata");
    ok(as_user(user, &dir.path).arg("mkdir").arg(&data));
    (dir, data)
}

/// `asme run -d --rm -v DATA:/var/lib/postgresql/data`: auto reads the image's entrypoint
/// (it chowns and drops to postgres) and picks fuse, whose recorded owners keep what the
/// container's chown sets, and the files the user's.
#[test]
fn asme_run_keeps_a_database_the_users() {
    let user = user1234();
    let (dir, data) = data_folder(user, "database-run");
    let mount = format!("{}:{PGDATA}", data.display());
    database_keeps_its_data_as_the_owner(user, &dir, &data, |name| {
        asme_run(user, &dir.path, name, &mount)
    });
}

/// `asme -v run -d --rm --name NAME -v MOUNT asme-test/postgres` as `user`, checking that
/// auto chose fuse because the image's program changes users.
fn asme_run(user: &User, cwd: &Path, name: &str, mount: &str) -> Run {
    let postgres = image("postgres");
    let args = [
        "-v", "run", "-d", "--rm", "--name", name, "-v", mount, &postgres,
    ];
    let run = Run::of(asme_as(user, cwd, &args));
    for said in ["the image's program changes users", "strategy fuse:"] {
        assert!(run.stderr.contains(said), "{}", run.explain());
    }
    run
}

/// The same on a share the user mounted with sshfs (no `allow_other`): served by fuse as the
/// user, the owners recorded in the data folder's hidden `.asme-owners`. Checked on the
/// folder sshd serves (root may not enter the user's mount).
#[test]
fn a_database_on_a_users_share_stays_the_users() {
    let user = user1234();
    let share = Share::mount(user);
    ok(as_user(user, &user.home)
        .arg("mkdir")
        .arg(share.mountpoint.join("pgdata")));
    let mount = format!("{}:{PGDATA}", share.mountpoint.join("pgdata").display());
    let data = share.backing.join("pgdata");
    database_keeps_its_data_as_the_owner(user, &share.backing, &data, |name| {
        asme_run(user, &user.home, name, &mount)
    });
}

/// A volume of the driver, removed when dropped (its folder is the test's).
struct Volume<'u> {
    name: String,
    user: &'u User,
}

impl Drop for Volume<'_> {
    fn drop(&mut self) {
        let _ = docker_as(
            self.user,
            &self.user.home,
            &["volume", "rm", "-f", &self.name],
        )
        .output();
    }
}

/// Plain `docker run -v NAME:/var/lib/postgresql/data` on a volume of the driver made with
/// `-o source=DATA -o mapping=fuse`: the same through the plugin's FUSE mapping.
#[test]
fn a_volume_with_the_fuse_mapping_keeps_a_database_the_users() {
    let user = user1234();
    // This build's plugin, as tests/volume.rs installs it.
    ok(asme_as(user, &user.home, &["plugin", "install"]));
    let (dir, data) = data_folder(user, "database-volume");
    let volume = Volume {
        name: format!("asme-test-database-{}", std::process::id()),
        user,
    };
    let source = format!("source={}", data.display());
    let create = [
        "volume",
        "create",
        "-d",
        "asme",
        "-o",
        &source,
        "-o",
        "mapping=fuse",
        &volume.name,
    ];
    ok(docker_as(user, &dir.path, &create));
    let mount = format!("{}:{PGDATA}", volume.name);
    let postgres = image("postgres");
    let mapping = [
        "volume",
        "inspect",
        "-f",
        "{{.Status.Mapping}}",
        &volume.name,
    ];
    database_keeps_its_data_as_the_owner(user, &dir, &data, |name| {
        let args = ["run", "-d", "--name", name, "-v", &mount, &postgres];
        let run = Run::of(docker_as(user, &dir.path, &args));
        if run.status == Some(0) {
            // Mounted now: served by FUSE, as asked.
            assert_eq!(ok(docker_as(user, &dir.path, &mapping)), "fuse\n");
        }
        run
    });
    ok(docker_as(user, &dir.path, &["volume", "rm", &volume.name]));
}

//! e2e: `asme proxy` (issue 13), a Docker Engine API endpoint of the user's own that forwards to
//! the real engine and turns the user's bind-mounted folders into volumes of asme's driver. Real
//! clients talk to it, as the user, with root containers: the docker CLI (attach, tty, logs,
//! exec), a CI runner's job-container sequence, docker-compose v1, the Docker SDK for Python, the
//! Dev Containers CLI, the `asme` docker context, and bad or vanishing clients. Everything they
//! write into the user's folders must be the user's.

mod testenv;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use testenv::{
    ContainerName, Run, TestDir, User, as_user, assert_all_owned, docker, image, spawn_until,
    user1234,
};

/// How long any one client command may take before the test calls it hung.
const DEADLINE: Duration = Duration::from_secs(60);

/// `asme proxy --socket PATH` run as the user, one per test; stopped with SIGTERM when dropped.
struct Proxy {
    child: Child,
    _stdout: std::io::BufReader<ChildStdout>,
    socket: PathBuf,
    user: &'static User,
    _dir: TestDir,
}

impl Proxy {
    fn start(label: &str) -> Proxy {
        let user = user1234();
        let dir = TestDir::new(user, &format!("proxy-{label}-sock"));
        let socket = dir.join("docker.sock");
        let mut cmd = as_user(user, &dir.path);
        cmd.arg(env!("CARGO_BIN_EXE_asme"))
            .args(["proxy", "--socket"])
            .arg(&socket);
        let (child, stdout) = spawn_until(cmd, &format!("listening on {}", socket.display()));
        let meta = fs::symlink_metadata(&socket).unwrap();
        assert!(
            meta.file_type().is_socket(),
            "{} is no socket",
            socket.display()
        );
        assert_eq!(meta.mode() & 0o777, 0o600, "the socket's mode");
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid, user.gid),
            "the socket's owner"
        );
        Proxy {
            child,
            _stdout: stdout,
            socket,
            user,
            _dir: dir,
        }
    }

    /// `PROGRAM` as the user in `cwd`, with `DOCKER_HOST` at this proxy.
    fn cmd(&self, cwd: &Path, program: &str) -> Command {
        let mut cmd = as_user(self.user, cwd);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .arg(program);
        cmd
    }

    /// `docker ARGS` as the user through this proxy.
    fn docker(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = self.cmd(cwd, "docker");
        cmd.args(args);
        cmd
    }

    /// Asserts that the proxy still runs and still answers.
    fn assert_serving(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "the proxy exited: {status:?}");
        let home = &self.user.home;
        let version = timed(
            self.docker(home, &["version", "-f", "{{.Server.Version}}"]),
            b"",
        );
        assert!(!version.ok().trim().is_empty());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let early = self.child.try_wait().unwrap();
        if early.is_none() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if std::thread::panicking() {
            return;
        }
        assert!(
            early.is_none(),
            "the proxy exited before the test ended: {early:?}"
        );
        let status = status.expect("the proxy did not exit within 10 s of SIGTERM");
        assert_eq!(status.code(), Some(0), "the proxy's exit on SIGTERM");
        assert!(
            !self.socket.exists(),
            "the proxy left its socket {}",
            self.socket.display()
        );
    }
}

/// Runs `cmd` with `input` on its stdin, killing it (and failing) if it takes longer than
/// [`DEADLINE`]: a hung stream through the proxy fails the test instead of hanging it.
fn timed(mut cmd: Command, input: &[u8]) -> Run {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        // A command that does not read its stdin may close it early.
        let _ = stdin.write_all(&input);
    });
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    feeder.join().unwrap();
    let run = Run {
        cmd: desc,
        status: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "hung for {DEADLINE:?}, killed\n{}",
        run.explain()
    );
    run
}

/// Waits for a client started with [`spawn_until`] after killing it (a client that vanishes).
fn kill_client(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A folder made by the test (in one that exists), the user's.
fn mkdir_as(user: &User, path: &Path) {
    fs::create_dir(path).unwrap();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

/// A file written by the test, the user's.
fn write_as(user: &User, path: &Path, contents: &str) {
    fs::write(path, contents).unwrap();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

/// The volumes of asme's driver that mention `dir` (the rewrite's volumes over it): none may be
/// left once the client has removed its containers. Whatever is found is removed, so a failure
/// leaves nothing behind for the next run.
fn assert_no_volume_left(dir: &Path, after: &str) {
    let names = Run::of(docker(&["volume", "ls", "-q", "--filter", "driver=asme"])).ok();
    let names: Vec<&str> = names.split_whitespace().collect();
    if names.is_empty() {
        return;
    }
    let mut args = vec!["volume", "inspect"];
    args.extend(&names);
    let inspected = Run::of(docker(&args));
    // A volume removed meanwhile (another test's) makes inspect fail for it; the rest is printed.
    let volumes: Vec<serde_json::Value> =
        serde_json::from_str(&inspected.stdout).unwrap_or_default();
    let needle = dir.display().to_string();
    let left: Vec<String> = volumes
        .iter()
        .filter(|v| v.to_string().contains(&needle))
        .map(|v| v["Name"].as_str().unwrap_or_default().to_string())
        .collect();
    for name in &left {
        let _ = Run::of(docker(&["volume", "rm", "-f", name]));
    }
    assert!(
        left.is_empty(),
        "after {after}, volumes over {} were left: {left:?}",
        dir.display()
    );
}

/// Removes (as root, at the engine itself) every container labelled `KEY=VALUE`, so that a
/// failing test leaves none.
struct LabelledContainers(String);

impl Drop for LabelledContainers {
    fn drop(&mut self) {
        let filter = format!("label={}", self.0);
        let ids = Run::of(docker(&["ps", "-aq", "--filter", &filter])).stdout;
        for id in ids.split_whitespace() {
            let _ = Run::of(docker(&["rm", "-f", "-v", id]));
        }
    }
}

#[test]
fn docker_run_i_passes_stdin_and_the_exit_status() {
    let user = user1234();
    let proxy = Proxy::start("run-i");
    let ws = TestDir::new(user, "proxy-run-i");
    let input: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
    let mount = format!("{}:/w", ws.path.display());
    let args = [
        "run",
        "--rm",
        "-i",
        "-v",
        &mount,
        &image("busybox"),
        "sh",
        "-c",
        "cat > /w/in; id -u > /w/uid; echo done; exit 3",
    ];
    let run = timed(proxy.docker(&ws.path, &args), input.as_bytes());
    assert_eq!(run.code(), Some(3), "{}", run.explain());
    assert_eq!(run.stdout, "done\n", "{}", run.explain());
    assert!(
        fs::read_to_string(ws.join("in")).unwrap() == input,
        "stdin arrived altered"
    );
    assert_eq!(
        fs::read_to_string(ws.join("uid")).unwrap(),
        "0\n",
        "root inside"
    );
    assert_all_owned(&ws.path, user, 2);
    assert_no_volume_left(&ws.path, "docker run --rm");
}

#[test]
fn docker_run_t_under_a_pty() {
    let user = user1234();
    let proxy = Proxy::start("run-t");
    let ws = TestDir::new(user, "proxy-run-t");
    let inner = format!(
        "docker run --rm -it -v {}:/w {} sh -c 'touch /w/tty; id -u; tty'",
        ws.path.display(),
        image("busybox")
    );
    let mut cmd = proxy.cmd(&ws.path, "script");
    cmd.args(["-qec", &inner, "/dev/null"]);
    let run = timed(cmd, b"");
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    // The pty's output, in order (script may echo a control character before it).
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    let at = lines.iter().position(|l| l.ends_with('0'));
    let tty = at.and_then(|i| lines.get(i + 1));
    assert!(
        tty.is_some_and(|t| t.starts_with("/dev/pts/")),
        "{}",
        run.explain()
    );
    assert_all_owned(&ws.path, user, 1);
    assert_no_volume_left(&ws.path, "docker run --rm -it");
}

#[test]
fn docker_run_d_logs_f_and_exec_i() {
    let user = user1234();
    let proxy = Proxy::start("run-d");
    let ws = TestDir::new(user, "proxy-run-d");
    let name = ContainerName::new("proxy-run-d");
    let mount = format!("{}:/w", ws.path.display());
    let args = [
        "run",
        "-d",
        "--name",
        &name.0,
        "-v",
        &mount,
        &image("busybox"),
        "sh",
        "-c",
        "echo bye > /w/f; echo hello; exec sleep 600",
    ];
    timed(proxy.docker(&ws.path, &args), b"").ok();
    // The log stream, followed until the line appears, then dropped by the client.
    let (logs, _) = spawn_until(proxy.docker(&ws.path, &["logs", "-f", &name.0]), "hello");
    kill_client(logs);
    assert_eq!(fs::read_to_string(ws.join("f")).unwrap(), "bye\n");

    let exec = ["exec", "-i", &name.0, "sh", "-c", "cat > /w/e; id -u"];
    let run = timed(proxy.docker(&ws.path, &exec), b"through exec\n");
    assert_eq!(run.ok(), "0\n");
    assert_eq!(fs::read_to_string(ws.join("e")).unwrap(), "through exec\n");
    timed(proxy.docker(&ws.path, &["rm", "-f", "-v", &name.0]), b"").ok();
    assert_all_owned(&ws.path, user, 2);
    assert_no_volume_left(&ws.path, "docker rm -f -v");
}

/// A GitHub Actions container job, as actions/runner drives the docker CLI: `docker create` of
/// a job container that idles on `tail -f /dev/null` with the work folder (and its `_temp`
/// inside it) at /__w, the externals read-only at /__e and the engine's socket; `docker start`,
/// the checks it makes (`ps` by id, `inspect` of the env, the os-release probe), steps through
/// `docker exec -i ... sh -e` (a script on stdin; one from `_temp`), and `docker rm --force`,
/// which the runner runs without `-v`.
#[test]
fn a_ci_runner_container_job() {
    let user = user1234();
    let proxy = Proxy::start("runner");
    let work = TestDir::new(user, "proxy-runner-work");
    let externals = TestDir::new(user, "proxy-runner-externals");
    mkdir_as(user, &work.join("repo"));
    mkdir_as(user, &work.join("_temp"));
    mkdir_as(user, &work.join("_temp/_github_home"));
    write_as(user, &externals.join("tool"), "node\n");
    let name = ContainerName::new("proxy-runner");
    let label = format!("asme-e2e-runner-{}", std::process::id());
    let v = |host: &Path, inner: &str| format!("{}:{inner}", host.display());
    let (w, temp, home, ext) = (
        v(&work.path, "/__w"),
        v(&work.join("_temp"), "/__w/_temp"),
        v(&work.join("_temp/_github_home"), "/github/home"),
        v(&externals.path, "/__e:ro"),
    );
    let create = [
        "create",
        "--name",
        &name.0,
        "--label",
        &label,
        "--workdir",
        "/__w/repo",
        "-e",
        "HOME=/github/home",
        "-e",
        "GITHUB_ACTIONS=true",
        "-e",
        "CI=true",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        &w,
        "-v",
        &temp,
        "-v",
        &home,
        "-v",
        &ext,
        "--entrypoint",
        "tail",
        &image("busybox"),
        "-f",
        "/dev/null",
    ];
    let id = timed(proxy.docker(&work.path, &create), b"").ok();
    let id = id.trim();
    timed(proxy.docker(&work.path, &["start", id]), b"").ok();
    let ps = [
        "ps",
        "--all",
        "--filter",
        &format!("id={id}"),
        "--filter",
        "status=running",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Status}}",
    ];
    let listed = timed(proxy.docker(&work.path, &ps), b"").ok();
    assert!(listed.starts_with(&format!("{id} Up")), "{listed}");
    let env_format = "{{range .Config.Env}}{{println .}}{{end}}";
    let env = timed(
        proxy.docker(&work.path, &["inspect", "--format", env_format, id]),
        b"",
    )
    .ok();
    assert!(env.lines().any(|l| l == "GITHUB_ACTIONS=true"), "{env}");
    let release = ["exec", "-i", id, "sh", "-c", "cat /etc/*release | grep ^ID"];
    // busybox has no os-release: the probe fails the way it does on such images.
    let probe = timed(proxy.docker(&work.path, &release), b"");
    assert!(probe.code().is_some(), "{}", probe.explain());

    let step = |args: &[&str], script: &str| {
        let mut argv = vec!["exec", "-i", "--workdir", "/__w/repo", id];
        argv.extend(args);
        timed(proxy.docker(&work.path, &argv), script.as_bytes())
    };
    let one = step(
        &["sh", "-e"],
        "id -u > uid\nmkdir -p out\necho built > out/artifact\n\
         test -S /var/run/docker.sock\ncat /__e/tool\n! touch /__e/written 2>/dev/null\n",
    );
    assert_eq!(one.ok(), "node\n");
    write_as(
        user,
        &work.join("_temp/step2.sh"),
        "cp out/artifact out/copy\necho step > \"$HOME/.marker\"\necho step2\n",
    );
    assert_eq!(
        step(&["sh", "-e", "/__w/_temp/step2.sh"], "").ok(),
        "step2\n"
    );
    let failed = step(&["sh", "-e"], "echo partial > out/partial\nexit 7\n");
    assert_eq!(failed.code(), Some(7), "{}", failed.explain());
    timed(proxy.docker(&work.path, &["rm", "--force", id]), b"").ok();

    assert_eq!(fs::read_to_string(work.join("repo/uid")).unwrap(), "0\n");
    assert_eq!(
        fs::read_to_string(work.join("repo/out/copy")).unwrap(),
        "built\n"
    );
    assert!(work.join("_temp/_github_home/.marker").exists());
    assert!(!externals.join("written").exists());
    assert_all_owned(&work.path, user, 9);
    assert_all_owned(&externals.path, user, 1);
    assert_no_volume_left(&work.path, "the runner's docker rm --force (no -v)");
    assert_no_volume_left(&externals.path, "the runner's docker rm --force (no -v)");
}

/// Debian's docker-compose (v1, the Python one on docker-py): a root service writing into
/// `./data`, `up`, a `run --rm` (compose runs `docker start --attach` itself), `down -v`.
#[test]
fn docker_compose_v1() {
    let user = user1234();
    let proxy = Proxy::start("compose");
    let dir = TestDir::new(user, "proxy-compose");
    mkdir_as(user, &dir.join("data"));
    let file = format!(
        "version: \"2.4\"\nservices:\n  writer:\n    image: {}\n    volumes:\n      - ./data:/data\n    \
         command: [\"sh\", \"-c\", \"id -u > /data/uid && mkdir -p /data/sub && echo up >> /data/sub/log\"]\n",
        image("busybox")
    );
    write_as(user, &dir.join("docker-compose.yml"), &file);
    let project = format!("asmeproxy{}", std::process::id());
    let _leftovers = LabelledContainers(format!("com.docker.compose.project={project}"));
    let compose = |args: &[&str]| {
        let mut cmd = proxy.cmd(&dir.path, "docker-compose");
        cmd.env("PWD", &dir.path)
            .args(["--no-ansi", "-p", &project])
            .args(args);
        timed(cmd, b"")
    };
    compose(&["up", "--abort-on-container-exit"]).ok();
    let run = compose(&[
        "run",
        "--rm",
        "-T",
        "writer",
        "sh",
        "-c",
        "echo run >> /data/sub/log; id -u",
    ]);
    assert_eq!(run.ok().trim(), "0");
    compose(&["down", "-v"]).ok();
    assert_eq!(fs::read_to_string(dir.join("data/uid")).unwrap(), "0\n");
    assert_eq!(
        fs::read_to_string(dir.join("data/sub/log")).unwrap(),
        "up\nrun\n"
    );
    assert_all_owned(&dir.path, user, 5);
    assert_no_volume_left(&dir.path, "docker-compose down -v");
}

/// The Docker SDK for Python (Debian's python3-docker): `containers.run(remove=True)`, and a
/// detached container whose logs are streamed, then waited for.
#[test]
fn the_docker_sdk_for_python() {
    let user = user1234();
    let proxy = Proxy::start("sdk");
    let ws = TestDir::new(user, "proxy-sdk");
    let name = ContainerName::new("proxy-sdk");
    let script = r#"
import sys, docker
image, ws, name = sys.argv[1:4]
client = docker.from_env()
volumes = {ws: {'bind': '/w', 'mode': 'rw'}}
out = client.containers.run(image, "sh -c 'id -u; touch /w/sdk'", volumes=volumes, remove=True)
print('run:', out.decode().strip())
c = client.containers.run(image, "sh -c 'echo one; mkdir /w/d; echo two > /w/d/stream; echo three'",
                          volumes=volumes, detach=True, name=name)
lines = [l.decode().strip() for l in c.logs(stream=True, follow=True)]
print('logs:', ' '.join(lines))
print('status:', c.wait()['StatusCode'])
c.remove()
"#;
    let mut cmd = proxy.cmd(&ws.path, "/usr/bin/python3");
    cmd.args(["-c", script, &image("busybox")])
        .arg(&ws.path)
        .arg(&name.0);
    let out = timed(cmd, b"").ok();
    assert_eq!(out, "run: 0\nlogs: one three\nstatus: 0\n");
    assert_eq!(fs::read_to_string(ws.join("d/stream")).unwrap(), "two\n");
    assert_all_owned(&ws.path, user, 3);
    assert_no_volume_left(&ws.path, "the SDK's remove() (no v=True)");
}

/// The Dev Containers CLI (@devcontainers/cli): `devcontainer up` of a workspace whose
/// devcontainer.json names a local image and root (nothing to build or pull: no features, no
/// uid update), `devcontainer exec` writing into the workspace, and the container removed by
/// the label the CLI sets.
#[test]
fn the_dev_containers_cli() {
    let user = user1234();
    let found = Command::new("sh")
        .args(["-c", "command -v devcontainer"])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "the Dev Containers CLI is missing: `npm install -g @devcontainers/cli` (bash .ci/run \
         installs it)"
    );
    let proxy = Proxy::start("devcontainer");
    let ws = TestDir::new(user, "proxy-devcontainer");
    mkdir_as(user, &ws.join(".devcontainer"));
    let config = format!(
        r#"{{"image": "{}", "remoteUser": "root", "updateRemoteUserUID": false, "overrideCommand": true}}"#,
        image("debian")
    );
    write_as(user, &ws.join(".devcontainer/devcontainer.json"), &config);
    let label = format!("devcontainer.local_folder={}", ws.path.display());
    let _leftovers = LabelledContainers(label.clone());
    let folder = ws.path.display().to_string();

    let mut up = proxy.cmd(&ws.path, "devcontainer");
    up.args(["up", "--workspace-folder", &folder]);
    let up = timed(up, b"").ok();
    let outcome: serde_json::Value = serde_json::from_str(up.lines().last().unwrap()).unwrap();
    assert_eq!(outcome["outcome"], "success", "{up}");
    let mut exec = proxy.cmd(&ws.path, "devcontainer");
    exec.args(["exec", "--workspace-folder", &folder]).args([
        "sh",
        "-c",
        "touch new-file; mkdir -p out/d; echo x > out/d/f; id -u",
    ]);
    let exec = timed(exec, b"").ok();
    assert_eq!(exec.lines().last(), Some("0"), "{exec}");

    let filter = format!("label={label}");
    let ids = timed(
        proxy.docker(&ws.path, &["ps", "-aq", "--filter", &filter]),
        b"",
    )
    .ok();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    timed(proxy.docker(&ws.path, &["rm", "-f", "-v", ids[0]]), b"").ok();
    assert!(ws.join("new-file").exists());
    assert_all_owned(&ws.path, user, 6);
    assert_no_volume_left(&ws.path, "docker rm -f -v of the dev container");
}

/// `asme context uninstall` as the user when dropped (also before installing: a run that
/// crashed may have left the context).
struct Context<'p>(&'p Proxy);

impl Context<'_> {
    fn uninstall(&self) -> Run {
        let user = self.0.user;
        let mut cmd = as_user(user, &user.home);
        cmd.arg(env!("CARGO_BIN_EXE_asme"))
            .args(["context", "uninstall"]);
        timed(cmd, b"")
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        self.uninstall();
    }
}

#[test]
fn the_asme_docker_context() {
    let user = user1234();
    let proxy = Proxy::start("context");
    let ws = TestDir::new(user, "proxy-context");
    let context = Context(&proxy);
    context.uninstall();
    // The user's own docker, without DOCKER_HOST: contexts live in the user's ~/.docker.
    let docker_as = |args: &[&str]| {
        let mut cmd = as_user(user, &user.home);
        cmd.arg("docker").args(args);
        timed(cmd, b"")
    };
    let mut install = as_user(user, &user.home);
    install
        .arg(env!("CARGO_BIN_EXE_asme"))
        .args(["context", "install", "--socket"])
        .arg(&proxy.socket);
    timed(install, b"").ok();
    let host = docker_as(&[
        "context",
        "inspect",
        "-f",
        "{{.Endpoints.docker.Host}}",
        "asme",
    ]);
    assert_eq!(
        host.ok().trim(),
        format!("unix://{}", proxy.socket.display())
    );

    let mount = format!("{}:/w", ws.path.display());
    let busybox = image("busybox");
    let run = docker_as(&[
        "--context",
        "asme",
        "run",
        "--rm",
        "-v",
        &mount,
        &busybox,
        "sh",
        "-c",
        "id -u; touch /w/ctx",
    ]);
    assert_eq!(run.ok(), "0\n");
    assert_all_owned(&ws.path, user, 1);
    assert_no_volume_left(&ws.path, "docker --context asme run --rm");

    context.uninstall().ok();
    let names = docker_as(&["context", "ls", "--format", "{{.Name}}"]).ok();
    assert!(!names.lines().any(|n| n == "asme"), "{names}");
    // Whatever context is current now exists: the user's docker still works.
    docker_as(&["version", "-f", "{{.Server.Version}}"]).ok();
}

/// Raw HTTP against the proxy's socket (Python's http.client as the user): malformed JSON, an
/// unknown path, a 64 MiB create, a truncated body, bytes that are not HTTP, _ping. One JSON
/// line per case.
const RAW_CLIENT: &str = r#"
import http.client, json, socket, sys
path, image, bad, huge = sys.argv[1:5]

class Conn(http.client.HTTPConnection):
    def __init__(self):
        super().__init__('localhost', timeout=30)
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)

def request(method, url, body=None):
    c = Conn()
    headers = {'Content-Type': 'application/json'} if body is not None else {}
    try:
        c.request(method, url, body=body, headers=headers)
    except OSError as e:
        # The proxy may answer and close before the whole body is sent: read what it said.
        try:
            r = c.getresponse()
        except (OSError, http.client.HTTPException):
            return {'closed': type(e).__name__}
    else:
        try:
            r = c.getresponse()
        except (OSError, http.client.HTTPException) as e:
            return {'closed': type(e).__name__}
    data = r.read()
    return {'status': r.status, 'type': r.getheader('Content-Type'),
            'body': data.decode('utf-8', 'replace')[:500]}

def raw(data):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return {'answer': s.recv(200).decode('latin1')}
    except OSError as e:
        return {'closed': type(e).__name__}
    finally:
        s.close()

out = {}
out['malformed'] = request('POST', '/v1.41/containers/create?name=' + bad,
                           b'{"Image": "' + image.encode() + b'", "Cmd": [}')
out['unknown'] = request('GET', '/v1.41/no/such/endpoint')
pad = 'a' * (64 << 20)
out['huge'] = request('POST', '/v1.41/containers/create?name=' + huge,
                      json.dumps({'Image': image, 'Labels': {'pad': pad}}).encode())
# A body shorter than its Content-Length, and the client gone.
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(b'POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\n'
          b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"Image":')
s.close()
out['garbage'] = raw(b'NOT HTTP AT ALL\r\n\r\n')
out['ping'] = request('GET', '/_ping')
out['head_ping'] = request('HEAD', '/_ping')
print(json.dumps(out))
"#;

#[test]
fn bad_requests_get_the_engines_errors_and_leave_the_proxy_serving() {
    let user = user1234();
    let mut proxy = Proxy::start("bad");
    let bad = ContainerName::new("proxy-bad-json");
    let huge = ContainerName::new("proxy-huge");
    let mut cmd = as_user(user, &user.home);
    cmd.args(["/usr/bin/python3", "-c", RAW_CLIENT])
        .arg(&proxy.socket)
        .args([&image("busybox"), &bad.0, &huge.0]);
    let out = timed(cmd, b"").ok();
    let cases: serde_json::Value = serde_json::from_str(&out).unwrap();
    let explain = serde_json::to_string_pretty(&cases).unwrap();

    // Malformed JSON: an error in the engine's shape (engine 20.10 itself answers 500 here,
    // later engines 400), and no container.
    let malformed = &cases["malformed"];
    let status = malformed["status"].as_u64().unwrap_or(0);
    assert!(status == 400 || status == 500, "{explain}");
    assert!(
        malformed["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/json")),
        "{explain}"
    );
    let body: serde_json::Value =
        serde_json::from_str(malformed["body"].as_str().unwrap()).unwrap();
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{explain}"
    );
    assert_ne!(
        Run::of(docker(&["inspect", &bad.0])).code(),
        Some(0),
        "a malformed create made a container"
    );

    // An unknown path: the engine's 404.
    assert_eq!(cases["unknown"]["status"], 404, "{explain}");
    assert!(
        cases["unknown"]["body"]
            .as_str()
            .unwrap()
            .contains("message")
    );

    // 64 MiB of create: refused (an HTTP error) or the connection closed, and no container.
    let refused = cases["huge"]["status"].as_u64().is_some_and(|s| s >= 400)
        || cases["huge"]["closed"].is_string();
    assert!(refused, "{explain}");
    assert_ne!(
        Run::of(docker(&["inspect", &huge.0])).code(),
        Some(0),
        "a 64 MiB create made a container"
    );

    assert_eq!(cases["ping"]["status"], 200, "{explain}");
    assert_eq!(cases["ping"]["body"], "OK", "{explain}");
    assert_eq!(cases["head_ping"]["status"], 200, "{explain}");
    proxy.assert_serving();
}

/// Clients that vanish mid-stream: a `docker logs -f`, an attach with stdin, and a client
/// reading a container that floods its output, each killed while the stream runs. The
/// proxy keeps serving, and the containers are still there to remove.
#[test]
fn clients_that_vanish_mid_stream_leave_the_proxy_serving() {
    let user = user1234();
    let mut proxy = Proxy::start("vanish");
    let home = &user.home;
    let busybox = image("busybox");
    let name = ContainerName::new("proxy-vanish");
    let args = [
        "run",
        "-d",
        "-i",
        "--name",
        &name.0,
        &busybox,
        "sh",
        "-c",
        "echo ready; exec cat",
    ];
    timed(proxy.docker(home, &args), b"").ok();
    let (logs, _) = spawn_until(proxy.docker(home, &["logs", "-f", &name.0]), "ready");
    kill_client(logs);

    // An attach: what the client types comes back through the container's cat.
    let mut attach = proxy.docker(home, &["attach", &name.0]);
    attach.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = attach.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // Typed until it comes back: attach sends nothing before the stream is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let echo = std::thread::spawn(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        line
    });
    while !echo.is_finished() {
        assert!(Instant::now() < deadline, "attach echoed nothing");
        stdin.write_all(b"ping\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(echo.join().unwrap(), "ping\n");
    kill_client(child);

    // A flood read by a client that goes away.
    let flood = ContainerName::new("proxy-flood");
    let yes = ["run", "--name", &flood.0, &busybox, "yes"];
    let (reader, _) = spawn_until(proxy.docker(home, &yes), "y");
    kill_client(reader);

    proxy.assert_serving();
    let running = ["inspect", "-f", "{{.State.Running}}", &name.0];
    assert_eq!(timed(proxy.docker(home, &running), b"").ok(), "true\n");
    for n in [&name.0, &flood.0] {
        timed(proxy.docker(home, &["rm", "-f", "-v", n]), b"").ok();
    }
    proxy.assert_serving();
}

//! e2e: asme's PID 1 duties inside a real container: signals, zombies, the terminal.

mod testenv;

use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use testenv::{ContainerName, Run, TestDir, asme_as, docker, image, ok, user1000, user1234};

/// Starts `asme run` with a trap for `sig`, and returns once the shell has said it is ready.
fn start_trapping(
    sig: &str,
    name: &ContainerName,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let user = user1234();
    let dir = TestDir::new(user, "signals");
    let script = format!("trap 'echo got-{sig}; exit 42' {sig}; echo ready; sleep 600 & wait");
    testenv::spawn_until(
        asme_as(
            user,
            &dir.path,
            &[
                "run",
                "--rm",
                "--name",
                &name.0,
                &image("busybox"),
                "sh",
                "-c",
                &script,
            ],
        ),
        "ready",
    )
}

fn finish(
    mut child: Child,
    mut out: BufReader<std::process::ChildStdout>,
) -> (String, Option<i32>) {
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    (rest, child.wait().unwrap().code())
}

#[test]
fn signals_reach_the_command() {
    for sig in ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "WINCH"] {
        let name = ContainerName::new("sig");
        let (child, out) = start_trapping(sig, &name);
        ok(docker(&["kill", "--signal", sig, &name.0]));
        let (rest, code) = finish(child, out);
        assert_eq!(
            (rest.as_str(), code),
            (format!("got-{sig}\n").as_str(), Some(42)),
            "signal {sig}"
        );
    }
}

#[test]
fn sigterm_to_asme_reaches_the_command() {
    // `asme run` becomes the docker CLI, whose signal proxy passes it to PID 1: asme's init.
    let name = ContainerName::new("sigproxy");
    let (child, out) = start_trapping("TERM", &name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (rest, code) = finish(child, out);
    assert_eq!((rest.as_str(), code), ("got-TERM\n", Some(42)));
}

#[test]
fn orphans_are_reaped() {
    // Each `(cmd &)` leaves an orphan that is re-parented to PID 1 and exits: without a reaper
    // it stays a zombie. The shell polls `ps` with a deadline of 10 s.
    let user = user1000();
    let dir = TestDir::new(user, "zombies");
    let script = "for i in 1 2 3 4 5; do (true &); (sh -c 'exit 3' &); done; \
        i=0; while ps -o stat | grep -q Z; do i=$((i+1)); [ $i -gt 100 ] && { ps -o pid,ppid,stat,args; exit 1; }; sleep 0.1; done; \
        echo no-zombies";
    let out = ok(asme_as(
        user,
        &dir.path,
        &["run", "--rm", &image("busybox"), "sh", "-c", script],
    ));
    assert_eq!(out, "no-zombies\n");
}

#[test]
fn docker_init_flag_does_not_stack_inits() {
    let user = user1000();
    let dir = TestDir::new(user, "init-flag");
    let run = Run::of(asme_as(
        user,
        &dir.path,
        &[
            "-v",
            "run",
            "--rm",
            "--init",
            &image("busybox"),
            "sh",
            "-c",
            "tr '\\0' ' ' </proc/1/cmdline",
        ],
    ));
    assert!(run.stderr.contains("--init dropped"), "{}", run.explain());
    assert!(
        run.stdout.starts_with("/.asme-init init -- "),
        "{}",
        run.explain()
    );
}

/// A pseudo-terminal whose output is read with a deadline.
struct Pty {
    master: OwnedFd,
    seen: String,
}

impl Pty {
    fn write(&mut self, text: &str) {
        let mut file = std::fs::File::from(self.master.try_clone().unwrap());
        file.write_all(text.as_bytes()).unwrap();
    }

    /// Reads until `needle` has appeared in the output since the last call.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(at) = self.seen.find(needle) {
                let upto = self.seen[..at + needle.len()].to_string();
                self.seen.drain(..at + needle.len());
                return upto;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} on the terminal; got {:?}",
                self.seen
            );
            let mut fds = [nix::poll::PollFd::new(
                self.master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            nix::poll::poll(&mut fds, ms).unwrap();
            let mut buf = [0u8; 4096];
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => {
                    panic!("terminal closed before {needle:?}; got {:?}", self.seen)
                }
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => panic!("reading the terminal: {e}"),
            }
        }
    }
}

#[test]
fn interactive_tty_and_ctrl_c() {
    // user: the shell runs as the owner; idmap: as the image's root.
    for (strategy, name) in [("user", user1234().name.as_str()), ("idmap", "root")] {
        interactive_session(strategy, name);
    }
}

fn interactive_session(strategy: &str, expected_user: &str) {
    // Named, so that a failing test does not leave the shell's container waiting for input.
    let name = ContainerName::new("tty");
    let user = user1234();
    let dir = TestDir::new(user, "tty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave;
    let mut cmd = asme_as(
        user,
        &dir.path,
        &[
            "--strategy",
            strategy,
            "run",
            "-it",
            "--rm",
            "--name",
            &name.0,
            &image("busybox"),
            "sh",
        ],
    );
    cmd.env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and touch no shared state.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let mut term = Pty {
        master: pty.master,
        seen: String::new(),
    };
    // The marks are computed by the shell so that the terminal's echo of the input never
    // matches them.
    term.write("id -un; echo mark-$((6*7))\n");
    let before = term.expect("mark-42");
    assert!(
        before.contains(&format!("\r\n{expected_user}\r\n")),
        "{before:?}"
    );
    term.write("sh -c 'echo sleep$((1+1))ing; sleep 600; echo not-interrupted'\n");
    term.expect("sleep2ing");
    term.write("\x03");
    term.write("echo back-$((2*3))\n");
    let after = term.expect("back-6");
    assert!(!after.contains("not-interrupted"), "{after:?}");
    term.write("exit 7\n");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(7), "terminal said {:?}", term.seen);
    let _ = term.master.as_raw_fd();
}

//! `docker asme ...` with the real docker CLI: `asme install --cli-plugin` links docker-asme
//! into the user's plugin folder (here a DOCKER_CONFIG of the test's own, so the user's real
//! ~/.docker is untouched), `docker --help` lists it, commands and exit statuses pass through
//! docker, docker's global options reach asme, and `asme uninstall --cli-plugin` takes it away.

mod testenv;

use std::path::Path;
use std::process::Command;

use testenv::{Run, TestDir, User, as_user, asme_as, assert_all_owned, image, user1000};

/// `docker ARGS` as `user`, with `config` as the docker CLI's configuration folder.
fn docker_as(user: &User, cwd: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = as_user(user, cwd);
    cmd.env("DOCKER_CONFIG", config).arg("docker").args(args);
    cmd
}

#[test]
fn docker_asme_runs_asme_and_passes_its_status() {
    let user = user1000();
    let dir = TestDir::new(user, "cli-plugin");
    let config = dir.join("docker-config");
    let work = dir.join("work");
    for folder in [&config, &work] {
        std::fs::create_dir(folder).unwrap();
        std::os::unix::fs::chown(folder, Some(user.uid), Some(user.gid)).unwrap();
    }
    let busybox = image("busybox");

    let mut install = asme_as(user, &dir.path, &["install", "--cli-plugin"]);
    install.env("DOCKER_CONFIG", &config);
    let said = Run::of(install);
    assert_eq!(said.code(), Some(0), "{}", said.explain());
    let link = config.join("cli-plugins/docker-asme");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_asme")).unwrap(),
        "{}",
        said.explain()
    );

    let help = Run::of(docker_as(user, &dir.path, &config, &["--help"])).ok();
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("asme*") && l.contains("Run containers as me")),
        "docker --help does not list asme:\n{help}"
    );

    let version = Run::of(docker_as(user, &dir.path, &config, &["asme", "--version"])).ok();
    let own = Run::of(asme_as(user, &dir.path, &["--version"])).ok();
    assert_eq!(version, own);

    let exit7 = Run::of(docker_as(
        user,
        &dir.path,
        &config,
        &["asme", "run", "--rm", &busybox, "sh", "-c", "exit 7"],
    ));
    assert_eq!(exit7.code(), Some(7), "{}", exit7.explain());

    // What the container writes is the user's, as with asme run.
    let volume = format!("{}:/w", work.display());
    let write = [
        "asme",
        "run",
        "--rm",
        "-v",
        &volume,
        &busybox,
        "sh",
        "-c",
        "mkdir /w/d && touch /w/d/f",
    ];
    Run::of(docker_as(user, &dir.path, &config, &write)).ok();
    assert_all_owned(&work, user, 2);

    // docker's global options before `asme` reach asme (as DOCKER_HOST, DOCKER_CONTEXT).
    let global = Run::of(docker_as(
        user,
        &dir.path,
        &config,
        &[
            "-H",
            "unix:///var/run/docker.sock",
            "--log-level=error",
            "asme",
            "run",
            "--rm",
            &busybox,
            "sh",
            "-c",
            "exit 3",
        ],
    ));
    assert_eq!(global.code(), Some(3), "{}", global.explain());
    // --context outranks a DOCKER_HOST of the environment, in docker and so in asme.
    let mut context = docker_as(
        user,
        &dir.path,
        &config,
        &[
            "--context",
            "default",
            "asme",
            "run",
            "--rm",
            &busybox,
            "sh",
            "-c",
            "exit 4",
        ],
    );
    context.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let context = Run::of(context);
    assert_eq!(context.code(), Some(4), "{}", context.explain());
    let remote = Run::of(docker_as(
        user,
        &dir.path,
        &config,
        &[
            "-H",
            "tcp://192.0.2.1:2375",
            "asme",
            "run",
            "--rm",
            &busybox,
        ],
    ));
    assert_eq!(remote.code(), Some(125), "{}", remote.explain());
    assert!(
        remote.stderr.contains("not on this machine"),
        "{}",
        remote.explain()
    );

    // Usage errors keep asme's statuses, and name `docker asme`.
    let unknown = Run::of(docker_as(user, &dir.path, &config, &["asme", "frobnicate"]));
    assert_eq!(unknown.code(), Some(2), "{}", unknown.explain());
    let usage = Run::of(docker_as(
        user,
        &dir.path,
        &config,
        &["asme", "fix", "--help"],
    ))
    .ok();
    assert!(usage.contains("Usage: docker asme fix"), "{usage}");

    let mut uninstall = asme_as(user, &dir.path, &["uninstall", "--cli-plugin"]);
    uninstall.env("DOCKER_CONFIG", &config);
    Run::of(uninstall).ok();
    assert!(
        link.symlink_metadata().is_err(),
        "docker-asme is still there"
    );
    let help = Run::of(docker_as(user, &dir.path, &config, &["--help"])).ok();
    assert!(
        !help.contains("asme*"),
        "docker --help still lists asme:\n{help}"
    );
}

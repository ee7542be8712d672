//! e2e: `asme run` on the real engine, run by ordinary host users: the `user` strategy, and
//! what every strategy must keep of `docker run` (command, flags, exit codes, errors).

mod testenv;

use std::fs;
use std::os::unix::fs::MetadataExt;

use testenv::{
    ContainerName, Run, TestDir, User, as_user, asme_as, assert_all_owned, docker, image, ok,
    user1000, user1234, users,
};

/// Every strategy, for the checks that do not depend on one.
const STRATEGIES: [&str; 2] = ["user", "idmap"];

/// `asme --strategy STRATEGY ARGS` run as `user` in `cwd`.
fn asme_with(
    strategy: &str,
    user: &User,
    cwd: &std::path::Path,
    args: &[&str],
) -> std::process::Command {
    let mut argv = vec!["--strategy", strategy];
    argv.extend_from_slice(args);
    asme_as(user, cwd, &argv)
}

/// `asme --strategy user ARGS`: most of this file is about the user strategy.
fn asme_user(user: &User, cwd: &std::path::Path, args: &[&str]) -> std::process::Command {
    asme_with("user", user, cwd, args)
}

/// A script that writes every kind of entry into the mount.
const WRITE_EVERYTHING: &str = "set -e; mkdir -p a/b/c; echo x > a/b/c/f; touch top; \
     ln -s top link; ln top hard; mkfifo fifo; cp top copy; mv copy moved; chmod 600 moved; \
     echo done";

#[test]
fn writes_into_bind_mounts_belong_to_the_user() {
    for user in users() {
        for img in ["busybox", "nopasswd", "user1000", "debian"] {
            let dir = TestDir::new(user, &format!("own-{img}"));
            let mount = format!("{}:/w", dir.path.display());
            let out = ok(asme_user(
                user,
                &dir.path,
                &[
                    "run",
                    "--rm",
                    "-v",
                    &mount,
                    "-w",
                    "/w",
                    &image(img),
                    "sh",
                    "-c",
                    WRITE_EVERYTHING,
                ],
            ));
            assert_eq!(out.trim(), "done");
            assert_all_owned(&dir.path, user, 9);
        }
    }
}

/// `id -un`, `whoami`, and a writable HOME that the account names.
const ACCOUNT: &str = "id -un; whoami; id -u; id -g; echo \"$HOME\"; \
     grep \"^$(id -un):\" /etc/passwd | cut -d: -f6; touch \"$HOME/.probe\" && echo home-writable";

fn account(user: &User, args: &[&str]) -> Vec<String> {
    let dir = TestDir::new(user, "account");
    let mut argv = vec!["run", "--rm"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["sh", "-c", ACCOUNT]);
    ok(asme_user(user, &dir.path, &argv))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_command_sees_a_proper_account() {
    for user in users() {
        for img in ["busybox", "nopasswd", "debian"] {
            let lines = account(user, &[&image(img)]);
            let home = format!("/home/{}", user.name);
            assert_eq!(
                lines,
                [
                    &user.name,
                    &user.name,
                    &user.uid.to_string(),
                    &user.gid.to_string(),
                    &home,
                    &home,
                    "home-writable"
                ],
                "image {img}"
            );
        }
    }
}

#[test]
fn an_image_user_at_the_owners_uid_is_reused() {
    // asme-test/user1000 has `app` at 1000 with /home/app owned by 1000 and member of audio (29).
    let lines = account(user1000(), &[&image("user1000")]);
    assert_eq!(
        lines,
        [
            "app",
            "app",
            "1000",
            &user1000().gid.to_string(),
            "/home/app",
            "/home/app",
            "home-writable"
        ]
    );
    let dir = TestDir::new(user1000(), "groups");
    let groups = ok(asme_user(
        user1000(),
        &dir.path,
        &["run", "--rm", &image("user1000"), "id", "-G"],
    ));
    assert!(
        groups.split_whitespace().any(|g| g == "29"),
        "supplementary group audio missing: {groups}"
    );
    // The image's .profile is still there: HOME is the image's folder, not a tmpfs over it.
    ok(asme_user(
        user1000(),
        &dir.path,
        &[
            "run",
            "--rm",
            &image("user1000"),
            "test",
            "-f",
            "/home/app/.profile",
        ],
    ));
}

#[test]
fn an_image_user_at_another_uid_is_not_borrowed() {
    // Owner 1234 on an image whose USER is app (1000): runs as the owner, writes as 1234.
    let user = user1234();
    let lines = account(user, &[&image("user1000")]);
    assert_eq!(lines[0], user.name);
    assert_eq!(lines[2], "1234");
    let dir = TestDir::new(user, "user1000-as-1234");
    let mount = format!("{}:/w", dir.path.display());
    ok(asme_user(
        user,
        &dir.path,
        &[
            "run",
            "--rm",
            "-v",
            &mount,
            &image("user1000"),
            "touch",
            "/w/f",
        ],
    ));
    assert_all_owned(&dir.path, user, 1);
}

#[test]
fn debian_tools_work_python_home_and_git_commit() {
    for user in users() {
        let dir = TestDir::new(user, "git");
        let mount = format!("{}:/src", dir.path.display());
        let script = "set -e; python3 -c 'import os; h=os.path.expanduser(\"~\"); \
             print(h == os.environ[\"HOME\"] and os.access(h, os.W_OK))'; \
             git config --global user.email me@example.org; git config --global user.name Me; \
             git init -q repo; cd repo; echo hi > README; git add README; git commit -qm first; \
             git log --format=%s";
        let out = ok(asme_user(
            user,
            &dir.path,
            &[
                "run",
                "--rm",
                "-v",
                &mount,
                "-w",
                "/src",
                &image("debian"),
                "bash",
                "-c",
                script,
            ],
        ));
        assert_eq!(out, "True\nfirst\n");
        assert_all_owned(&dir.path, user, 10);
    }
}

#[test]
fn read_only_root_filesystem() {
    let user = user1234();
    let dir = TestDir::new(user, "ro");
    let mount = format!("{}:/w", dir.path.display());
    let out = ok(asme_user(
        user,
        &dir.path,
        &[
            "run",
            "--rm",
            "--read-only",
            "-v",
            &mount,
            &image("busybox"),
            "sh",
            "-c",
            "id -un; touch $HOME/x && echo home-ok; touch /w/f && echo mount-ok; touch /etc/x 2>/dev/null || echo root-ro",
        ],
    ));
    assert_eq!(out, format!("{}\nhome-ok\nmount-ok\nroot-ro\n", user.name));
    assert_all_owned(&dir.path, user, 1);
}

#[test]
fn docker_exec_runs_as_the_owner_too() {
    let user = user1234();
    let dir = TestDir::new(user, "exec");
    let name = ContainerName::new("exec");
    let mount = format!("{}:/w", dir.path.display());
    ok(asme_user(
        user,
        &dir.path,
        &[
            "run",
            "-d",
            "--name",
            &name.0,
            "-v",
            &mount,
            &image("busybox"),
            "sleep",
            "600",
        ],
    ));
    let out = ok(as_user(user, &dir.path).args([
        "docker",
        "exec",
        &name.0,
        "sh",
        "-c",
        "id -un; echo $HOME; mkdir /w/d; touch /w/d/f; touch $HOME/y && echo ok",
    ]));
    assert_eq!(out, format!("{0}\n/home/{0}\nok\n", user.name));
    assert_all_owned(&dir.path, user, 2);
}

#[test]
fn root_cannot_be_regained() {
    let user = user1000();
    let dir = TestDir::new(user, "caps");
    let out = ok(asme_user(
        user,
        &dir.path,
        &[
            "run",
            "--rm",
            &image("debian"),
            "bash",
            "-c",
            "grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status | awk '{print $2}' | sort -u; \
         python3 -c 'import os\ntry:\n os.setuid(0); print(\"became root\")\nexcept PermissionError: print(\"EPERM\")'; \
         su -c id root </dev/null >/dev/null 2>&1 && echo su-worked || echo su-refused",
        ],
    ));
    assert_eq!(out, "0000000000000000\nEPERM\nsu-refused\n");
}

#[test]
fn explicit_user_is_honoured() {
    let user = user1000();
    let dir = TestDir::new(user, "explicit");
    let mount = format!("{}:/w", dir.path.display());
    let run = Run::of(asme_user(
        user,
        &dir.path,
        &[
            "-v",
            "run",
            "--rm",
            "--user",
            "0:0",
            "-v",
            &mount,
            &image("busybox"),
            "sh",
            "-c",
            "id -u; touch /w/f",
        ],
    ));
    assert!(run.stderr.contains("--user 0:0 given"), "{}", run.explain());
    assert_eq!(run.ok(), "0\n");
    assert_eq!(fs::metadata(dir.join("f")).unwrap().uid(), 0);
}

#[test]
fn image_entrypoint_cmd_workdir_env_are_kept() {
    // An image with ENTRYPOINT, CMD, WORKDIR and ENV, made from the busybox test image.
    let base = image("busybox");
    let tag = format!("asme-test/entrypoint:e2e-{}", std::process::id());
    let tag = tag.as_str();
    struct RemoveImage<'a>(&'a str);
    impl Drop for RemoveImage<'_> {
        fn drop(&mut self) {
            let _ = docker(&["image", "rm", self.0]).output();
        }
    }
    let cid = ok(&mut docker(&["create", &base, "true"]));
    ok(&mut docker(&[
        "commit",
        "-c",
        "ENTRYPOINT [\"/bin/echo\", \"ep\"]",
        "-c",
        "CMD [\"default\"]",
        "-c",
        "WORKDIR /srv",
        "-c",
        "ENV FOO=bar",
        cid.trim(),
        tag,
    ]));
    ok(&mut docker(&["rm", cid.trim()]));
    let _remove = RemoveImage(tag);
    let user = user1234();
    let dir = TestDir::new(user, "ep");
    let cases: &[&[&str]] = &[
        &[tag],
        &[tag, "given", "args"],
        &["--entrypoint", "/bin/sh", tag, "-c", "echo $FOO; pwd"],
        &["--entrypoint", "", tag, "echo", "no-ep"],
        &[
            "-w",
            "/tmp",
            "-e",
            "FOO=over",
            "--entrypoint",
            "sh",
            tag,
            "-c",
            "echo $FOO; pwd",
        ],
    ];
    for case in cases {
        let mut plain = vec!["run", "--rm"];
        plain.extend_from_slice(case);
        let want = ok(as_user(user, &dir.path).arg("docker").args(&plain));
        let mut asme = vec!["run", "--rm"];
        asme.extend_from_slice(case);
        for strategy in STRATEGIES {
            let got = ok(asme_with(strategy, user, &dir.path, &asme));
            assert_eq!(got, want, "strategy {strategy}, case {case:?}");
        }
    }
}

#[test]
fn env_and_flags_pass_through() {
    let user = user1000();
    let dir = TestDir::new(user, "flags");
    fs::write(dir.join("env"), "FROM_FILE=1\n").unwrap();
    let bb = image("busybox");
    let script = "echo $A$B$FROM_FILE; pwd; hostname; tr '\\0' ' ' </proc/1/cmdline";
    for strategy in STRATEGIES {
        let name = ContainerName::new("flags");
        let out = ok(asme_with(
            strategy,
            user,
            &dir.path,
            &[
                "run",
                "--rm",
                "-e",
                "A=1",
                "--env=B=2",
                "--env-file",
                "env",
                "--name",
                &name.0,
                "--network",
                "none",
                "-w",
                "/tmp",
                "--hostname",
                "box",
                "--init",
                &bb,
                "sh",
                "-c",
                script,
            ],
        ));
        assert_eq!(
            out,
            format!("121\n/tmp\nbox\n/.asme-init init -- sh -c {script} "),
            "{strategy}"
        );
    }
}

#[test]
fn exit_codes_match_docker_run() {
    let user = user1234();
    let dir = TestDir::new(user, "codes");
    let bb = image("busybox");
    let cases: &[(&[&str], i32)] = &[
        (&["run", "--rm", &bb, "sh", "-c", "exit 3"], 3),
        // (the trailing `exit` stops sh from exec'ing the inner sh as PID 1)
        (
            &[
                "run",
                "--rm",
                &bb,
                "sh",
                "-c",
                "sh -c 'kill -TERM $$'; exit $?",
            ],
            143,
        ),
        (&["run", "--rm", &bb, "no-such-command"], 127),
        (&["run", "--rm", &bb, "/etc/passwd"], 126),
        (&["run", "--rm", "--no-such-flag", &bb, "true"], 125),
        (
            &[
                "run",
                "--rm",
                "--pull=never",
                "asme-test/missing:none",
                "true",
            ],
            125,
        ),
        (&["run", "--rm", "asme-test/missing:none", "true"], 125),
    ];
    for (args, want) in cases {
        let plain = Run::of(as_user(user, &dir.path).arg("docker").args(*args));
        assert_eq!(
            plain.code(),
            Some(*want),
            "plain docker disagrees with the table\n{}",
            plain.explain()
        );
        for strategy in STRATEGIES {
            let run = Run::of(&mut asme_with(strategy, user, &dir.path, args));
            assert_eq!(run.code(), Some(*want), "{}", run.explain());
        }
    }
    // Under plain docker the command is PID 1, which the kernel shields from its own default
    // signals; under asme it is not, so a command killed by signal N exits 128+N, as docker
    // reports for any other process.
    for (sig, want) in [("TERM", 143), ("KILL", 137), ("INT", 130)] {
        let script = format!("kill -{sig} $$");
        let run = Run::of(&mut asme_user(
            user,
            &dir.path,
            &["run", "--rm", &bb, "sh", "-c", &script],
        ));
        assert_eq!(run.code(), Some(want), "{}", run.explain());
    }
}

#[test]
fn own_errors_are_one_line() {
    let user = user1000();
    let dir = TestDir::new(user, "errors");
    let bb = image("busybox");
    let cases: &[(&[(&str, &str)], &[&str], &str)] = &[
        (
            &[("DOCKER_HOST", "tcp://192.0.2.1:2376")],
            &["run", &bb, "true"],
            "is not on this machine",
        ),
        (
            &[("DOCKER_HOST", "unix:///nonexistent.sock")],
            &["run", &bb, "true"],
            "cannot reach the Docker engine",
        ),
        (&[], &["run", "--bogus", &bb], "unknown flag: --bogus"),
        (&[], &["--owner", "bob", "run", &bb], "invalid owner 'bob'"),
        (&[], &["run"], "requires at least 1 argument"),
    ];
    for (env, args, needle) in cases {
        let mut cmd = asme_user(user, &dir.path, args);
        cmd.envs(env.iter().copied());
        let run = Run::of(&mut cmd);
        // asme's own errors in a run are docker run's: 125.
        assert_eq!(run.code(), Some(125), "{}", run.explain());
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "not one line\n{}",
            run.explain()
        );
        assert!(run.stderr.contains(needle), "{}", run.explain());
    }
    // A bad value of asme's own option before `run`: still docker run's 125.
    let run = Run::of(testenv::asme_as(
        user,
        &dir.path,
        &["--strategy", "bogus", "run", &bb, "true"],
    ));
    assert_eq!(run.code(), Some(125), "{}", run.explain());
    assert!(
        run.stderr.contains("invalid value 'bogus'"),
        "{}",
        run.explain()
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.explain());
}

#[test]
fn owner_under_sudo_and_by_option() {
    // Root with SUDO_UID (what sudo sets) works for the sudo user; --owner overrides both.
    let dir = TestDir::new(user1234(), "sudo");
    let mount = format!("{}:/w", dir.path.display());
    let bb = image("busybox");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.args(["run", "--rm", "-v", &mount, &bb, "touch", "/w/sudo"])
        .env("SUDO_UID", "1234")
        .env("SUDO_GID", user1234().gid.to_string());
    ok(&mut cmd);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.args([
        "--owner", "1234", "run", "--rm", "-v", &mount, &bb, "touch", "/w/owner",
    ]);
    ok(&mut cmd);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.env("ASME_OWNER", "1234")
        .args(["run", "--rm", "-v", &mount, &bb, "touch", "/w/env"]);
    ok(&mut cmd);
    assert_all_owned(&dir.path, user1234(), 3);
}

#[test]
fn the_host_binary_cannot_be_changed_from_inside() {
    // Even root in the container (explicit --user 0) cannot write to the injected binary,
    // directly or through /proc/1/exe (CVE-2019-5736).
    let exe = env!("CARGO_BIN_EXE_asme");
    let before = fs::read(exe).unwrap();
    let user = user1000();
    let dir = TestDir::new(user, "binary");
    for strategy in STRATEGIES {
        let out = ok(asme_with(
            strategy,
            user,
            &dir.path,
            &[
                "run",
                "--rm",
                "--user",
                "0",
                &image("busybox"),
                "sh",
                "-c",
                "echo x >> /.asme-init && echo wrote-init; echo x >> /proc/1/exe && echo wrote-exe; \
         rm -f /.asme-init && echo removed; echo tried",
            ],
        ));
        assert_eq!(out, "tried\n");
    }
    assert!(fs::read(exe).unwrap() == before, "the host binary changed");
}

#[test]
fn root_as_owner_keeps_the_images_user() {
    // asme run by root itself (no sudo): nothing to map, and an image meant to run as a
    // non-root USER must not become root.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_asme"));
    cmd.env_remove("SUDO_UID").env_remove("SUDO_GID");
    cmd.args(["run", "--rm", &image("user1000"), "id", "-un"]);
    assert_eq!(ok(&mut cmd), "app\n");
}

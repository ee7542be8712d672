//! From the user's `docker run` arguments and the image's facts to the final argv. Pure.
//!
//! Owns three decisions: the exact command docker would have run (so asme can stand in front
//! of it as init), the owner's account inside the container (passwd/group text, HOME), and how
//! the docker arguments are rewritten to inject both. Reading images and writing files is
//! left to `engine` and the caller.

use std::path::{Path, PathBuf};

use crate::engine::mount_arg::{Access, bind_mount};
use crate::engine::{self, ImageConfig};
use crate::identity::{self, AccountRequest, PasswdFile};
use crate::init::probe::{ImageFacts, PathKind};
use crate::owner::Owner;
use crate::run::args::RunArgs;

/// Options asme replaces in the user's argv, and why.
/// - `--entrypoint`: asme is the entrypoint; the user's one is folded into the command.
/// - `--init`: asme is the init; a second one would only stand between it and the command.
/// - `--user`: set by the plan (kept as given when the user asked for another user).
/// - `--pull`: handled before the run; docker must not pull a second time.
const REPLACED_FLAGS: [&str; 4] = ["entrypoint", "init", "user", "pull"];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// docker run says the same and exits 125.
    #[error("no command specified: the image has no ENTRYPOINT or CMD and none was given")]
    NoCommand,
}

/// The command the container runs, with docker's rules for merging `--entrypoint`, the
/// command arguments and the image's ENTRYPOINT/CMD (moby `daemon/create.go` merge).
pub fn command_line(args: &RunArgs, image: &ImageConfig) -> Result<Vec<String>, PlanError> {
    let given = &args.command;
    let or_image_cmd = || {
        if given.is_empty() {
            image.cmd.clone().unwrap_or_default()
        } else {
            given.clone()
        }
    };
    let argv: Vec<String> = match args.last("entrypoint") {
        // `--entrypoint ""` clears the entrypoint but keeps the image's CMD.
        Some("") => or_image_cmd(),
        // Any other --entrypoint drops the image's CMD (docker run reference).
        Some(entrypoint) => std::iter::once(entrypoint.to_string())
            .chain(given.clone())
            .collect(),
        None => image
            .entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(or_image_cmd())
            .collect(),
    };
    if argv.is_empty() {
        return Err(PlanError::NoCommand);
    }
    Ok(argv)
}

/// Who the command runs as under the `user` strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The owner, with an account made for them.
    Owner,
    /// An explicit `--user` naming someone else: honoured, ownership is theirs.
    Explicit(String),
}

/// Reads an explicit `--user` against the owner: naming the owner's uid (or an image account
/// at that uid) still gets the owner's account.
pub fn run_as(args: &RunArgs, owner: Owner, facts: &ImageFacts) -> RunAs {
    let Some(user) = args.last("user") else {
        return RunAs::Owner;
    };
    let name = user.split(':').next().unwrap_or_default();
    let uid = name.parse::<u32>().ok().or_else(|| {
        PasswdFile::parse(facts.passwd.as_deref().unwrap_or(""))
            .by_name(name)
            .map(|e| e.uid)
    });
    if uid == Some(owner.uid) {
        RunAs::Owner
    } else {
        RunAs::Explicit(user.to_string())
    }
}

/// The uid and gid a container user spec (`--user` or the image's USER) runs as
/// (`ImageFacts::ids_of`).
pub fn container_ids(user: &str, facts: &ImageFacts) -> Result<(u32, u32), String> {
    facts.ids_of(user)
}

/// The owner's account inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPlan {
    pub accounts: identity::Accounts,
    /// HOME as the command sees it.
    pub home: String,
    /// Whether HOME is a fresh tmpfs (the image has no usable folder there).
    pub home_tmpfs: bool,
}

/// Where a home goes when the image's entry names one its user cannot use.
const FALLBACK_HOME: &str = "/home";

/// Decides the owner's account: reuse the image's entry for the uid or add one, and give it a
/// HOME it can write.
pub fn plan_account(
    facts: &ImageFacts,
    owner: Owner,
    user_name: &str,
    group_name: &str,
) -> AccountPlan {
    let request = AccountRequest {
        uid: owner.uid,
        gid: owner.gid,
        name: user_name,
        group_name,
    };
    let mut accounts =
        identity::merge_accounts(facts.passwd.as_deref(), facts.group.as_deref(), &request);
    let home = accounts.user.home.clone();
    let (home, home_tmpfs) = match home_state(facts, &home, owner.uid) {
        HomeState::Usable => (home, false),
        HomeState::Missing => (home, true),
        HomeState::Unusable => {
            // Never lay a tmpfs over a folder that is not a home (e.g. `/`, /usr/sbin): point
            // the entry at a folder of its own instead.
            let mut home = format!("{FALLBACK_HOME}/{}", accounts.user.name);
            if home_state(facts, &home, owner.uid) == HomeState::Unusable {
                home = format!("/.asme-home-{}", owner.uid);
            }
            let mut passwd = PasswdFile::parse(&accounts.passwd);
            passwd.set_home(owner.uid, &home);
            accounts.passwd = passwd.render();
            accounts.user.home = home.clone();
            let usable = home_state(facts, &home, owner.uid) == HomeState::Usable;
            (home, !usable)
        }
    };
    AccountPlan {
        accounts,
        home,
        home_tmpfs,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HomeState {
    /// A folder the owner owns.
    Usable,
    /// Nothing there: a tmpfs can be mounted without hiding anything.
    Missing,
    /// Something else (a system folder, a file, a symlink) or not a sane absolute path.
    Unusable,
}

fn home_state(facts: &ImageFacts, home: &str, uid: u32) -> HomeState {
    let sane = home.starts_with('/')
        && home != "/"
        && !home.split('/').any(|c| c == ".." || c == ".")
        && !home.contains(['\n', ',', ':']);
    if !sane {
        return HomeState::Unusable;
    }
    match facts.paths.get(home) {
        Some(fact) if fact.kind == PathKind::Dir && fact.uid == uid => HomeState::Usable,
        Some(_) => HomeState::Unusable,
        // The probe stats passwd homes; a path it did not report is missing from the image,
        // unless it lies under a folder it did see as something other than a folder.
        None => HomeState::Missing,
    }
}

/// What asme adds to the container, decided by the strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection<'a> {
    /// asme's binary on the host, mounted read-only as the init.
    pub exe: &'a Path,
    /// `--user` value to set, if any.
    pub user: Option<String>,
    pub group_add: Vec<u32>,
    /// Host files mounted read-only over /etc/passwd and /etc/group.
    pub account_files: Option<(PathBuf, PathBuf)>,
    /// (path, uid, gid) of a tmpfs HOME.
    pub home_tmpfs: Option<(String, u32, u32)>,
    /// HOME to set in the environment, when the image's ENV would point elsewhere.
    pub home_env: Option<String>,
}

/// The final `docker run` argv: the user's options minus [`REPLACED_FLAGS`], asme's own
/// options, then the image with asme as entrypoint and the original command after `--`.
pub fn rewrite(
    args: &RunArgs,
    command: &[String],
    inject: &Injection,
    program: engine::Program,
) -> Vec<String> {
    // The image always follows an explicit `--`, written by asme whether or not the user did.
    let mut kept = args.clone();
    kept.remove(&REPLACED_FLAGS);
    let mut argv = vec!["run".to_string()];
    argv.extend(kept.opts.iter().flat_map(|o| o.raw.iter().cloned()));
    argv.push("--mount".into());
    argv.push(engine::init_mount(inject.exe));
    if let Some((passwd, group)) = &inject.account_files {
        argv.push("--mount".into());
        argv.push(bind_mount(
            passwd,
            Path::new("/etc/passwd"),
            Access::ReadOnly,
        ));
        argv.push("--mount".into());
        argv.push(bind_mount(group, Path::new("/etc/group"), Access::ReadOnly));
    }
    if let Some((path, uid, gid)) = &inject.home_tmpfs {
        // exec: a HOME may hold tools (pip --user, cargo); nosuid,nodev as docker's own tmpfs.
        argv.push("--tmpfs".into());
        // Podman's --tmpfs takes no uid=/gid=; its `U` gives the tmpfs to the container's
        // user, which is the owner asme sets with --user.
        let owned = match program {
            engine::Program::Docker => format!("uid={uid},gid={gid}"),
            engine::Program::Podman => "U".to_string(),
        };
        argv.push(format!("{path}:rw,exec,nosuid,nodev,mode=0755,{owned}"));
    }
    if let Some(home) = &inject.home_env {
        argv.push("--env".into());
        argv.push(format!("HOME={home}"));
    }
    if let Some(user) = &inject.user {
        argv.push(format!("--user={user}"));
    }
    for gid in &inject.group_add {
        argv.push(format!("--group-add={gid}"));
    }
    argv.push(format!("--entrypoint={}", engine::INIT_PATH));
    argv.push("--".into());
    argv.push(args.image.clone());
    argv.push("init".into());
    argv.push("--".into());
    argv.extend(command.iter().cloned());
    argv
}

/// Whether the image's ENV sets a HOME that the user did not override with `-e`.
pub fn image_home_env<'a>(args: &RunArgs, image: &'a ImageConfig) -> Option<&'a str> {
    let user_sets_home = args
        .values("env")
        .any(|e| e == "HOME" || e.starts_with("HOME="));
    if user_sets_home {
        return None;
    }
    image.env.iter().find_map(|e| e.strip_prefix("HOME="))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::probe::PathFact;

    fn args(argv: &[&str]) -> RunArgs {
        RunArgs::parse(argv).unwrap()
    }

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageConfig {
            id: "sha256:1".into(),
            entrypoint: entrypoint.map(owned),
            cmd: cmd.map(owned),
            ..Default::default()
        }
    }

    #[test]
    fn command_line_follows_docker_merge_rules() {
        let ep_cmd = image(Some(&["/ep", "-x"]), Some(&["serve"]));
        let cmd_only = image(None, Some(&["sh"]));
        let bare = image(None, None);
        let cases: &[(&[&str], &ImageConfig, Result<&[&str], PlanError>)] = &[
            (&["img"], &ep_cmd, Ok(&["/ep", "-x", "serve"])),
            (
                &["img", "run", "1"],
                &ep_cmd,
                Ok(&["/ep", "-x", "run", "1"]),
            ),
            (
                &["--entrypoint", "/bin/sh", "img"],
                &ep_cmd,
                Ok(&["/bin/sh"]),
            ),
            (
                &["--entrypoint=/bin/sh", "img", "-c", "id"],
                &ep_cmd,
                Ok(&["/bin/sh", "-c", "id"]),
            ),
            (&["--entrypoint", "", "img"], &ep_cmd, Ok(&["serve"])),
            (&["--entrypoint", "", "img", "ls"], &ep_cmd, Ok(&["ls"])),
            (&["img"], &cmd_only, Ok(&["sh"])),
            (&["img", "ls", "-l"], &cmd_only, Ok(&["ls", "-l"])),
            (&["img"], &bare, Err(PlanError::NoCommand)),
            (
                &["--entrypoint", "", "img"],
                &bare,
                Err(PlanError::NoCommand),
            ),
            (&["img", "true"], &bare, Ok(&["true"])),
        ];
        for (argv, image, want) in cases {
            let got = command_line(&args(argv), image);
            let want = want
                .clone()
                .map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "argv {argv:?}");
        }
    }

    fn facts(passwd: &str, paths: &[(&str, PathKind, u32)]) -> ImageFacts {
        ImageFacts {
            passwd: Some(passwd.into()),
            group: Some("root:x:0:\n".into()),
            paths: paths
                .iter()
                .map(|(p, kind, uid)| {
                    (
                        p.to_string(),
                        PathFact {
                            kind: *kind,
                            uid: *uid,
                            gid: *uid,
                            mode: 0o755,
                        },
                    )
                })
                .collect(),
            program: None,
        }
    }

    const ROOT: &str = "root:x:0:0::/root:/bin/sh\n";
    const OWNER: Owner = Owner {
        uid: 1234,
        gid: 1234,
    };

    #[test]
    fn home_is_the_entrys_own_folder_when_usable() {
        let f = facts(
            &format!("{ROOT}app:x:1234:1234::/home/app:/bin/sh\n"),
            &[("/home/app", PathKind::Dir, 1234)],
        );
        let plan = plan_account(&f, OWNER, "alice", "alice");
        assert_eq!((plan.home.as_str(), plan.home_tmpfs), ("/home/app", false));
        assert_eq!(plan.accounts.user.name, "app");
    }

    #[test]
    fn missing_home_becomes_a_tmpfs() {
        let plan = plan_account(
            &facts(ROOT, &[("/home", PathKind::Dir, 0)]),
            OWNER,
            "alice",
            "",
        );
        assert_eq!((plan.home.as_str(), plan.home_tmpfs), ("/home/alice", true));
        assert!(
            plan.accounts
                .passwd
                .ends_with("alice:x:1234:1234:alice:/home/alice:/bin/sh\n")
        );
    }

    #[test]
    fn a_system_folder_is_never_covered() {
        let cases: &[(&str, &[(&str, PathKind, u32)], &str, bool)] = &[
            ("/", &[], "/home/d", true),
            (
                "/usr/sbin",
                &[("/usr/sbin", PathKind::Dir, 0)],
                "/home/d",
                true,
            ),
            (
                "/home/x",
                &[("/home/x", PathKind::Symlink, 1234)],
                "/home/d",
                true,
            ),
            ("relative", &[], "/home/d", true),
            // /home/d itself is taken by someone else: a folder of asme's own.
            (
                "/",
                &[("/home/d", PathKind::File, 0)],
                "/.asme-home-1234",
                true,
            ),
            ("/", &[("/home/d", PathKind::Dir, 1234)], "/home/d", false),
        ];
        for (entry_home, paths, want_home, want_tmpfs) in cases {
            let f = facts(
                &format!("{ROOT}d:x:1234:1234::{entry_home}:/bin/sh\n"),
                paths,
            );
            let plan = plan_account(&f, OWNER, "alice", "");
            assert_eq!(
                (plan.home.as_str(), plan.home_tmpfs),
                (*want_home, *want_tmpfs),
                "entry home {entry_home}"
            );
            assert!(
                plan.accounts
                    .passwd
                    .contains(&format!("d:x:1234:1234::{want_home}:/bin/sh\n")),
                "{}",
                plan.accounts.passwd
            );
        }
    }

    #[test]
    fn container_ids_resolve_like_runc() {
        let mut f = facts(&format!("{ROOT}app:x:1000:1001::/home/app:/bin/sh\n"), &[]);
        f.group = Some("root:x:0:\nstaff:x:50:\n".into());
        let cases: &[(&str, Result<(u32, u32), ()>)] = &[
            ("", Ok((0, 0))),
            ("root", Ok((0, 0))),
            ("app", Ok((1000, 1001))),
            ("1000", Ok((1000, 1001))),
            ("1000:7", Ok((1000, 7))),
            ("app:staff", Ok((1000, 50))),
            ("4242", Ok((4242, 0))),
            ("nobody", Err(())),
            ("app:nogroup", Err(())),
        ];
        for (user, want) in cases {
            assert_eq!(
                container_ids(user, &f).map_err(|_| ()),
                *want,
                "user {user:?}"
            );
        }
    }

    #[test]
    fn explicit_user() {
        let f = facts(&format!("{ROOT}app:x:1234:1234::/home/app:/bin/sh\n"), &[]);
        let cases: &[(&[&str], RunAs)] = &[
            (&["img"], RunAs::Owner),
            (&["--user", "1234", "img"], RunAs::Owner),
            (&["-u", "1234:50", "img"], RunAs::Owner),
            (&["--user=app", "img"], RunAs::Owner),
            (&["-u", "root", "img"], RunAs::Explicit("root".into())),
            (&["-u", "0:0", "img"], RunAs::Explicit("0:0".into())),
            (&["-u", "nobody", "img"], RunAs::Explicit("nobody".into())),
        ];
        for (argv, want) in cases {
            assert_eq!(&run_as(&args(argv), OWNER, &f), want, "argv {argv:?}");
        }
    }

    #[test]
    fn rewrite_injects_and_keeps_the_rest_verbatim() {
        let a = args(&[
            "-it",
            "--rm",
            "--init",
            "--entrypoint",
            "/bin/sh",
            "-v",
            "/src:/src",
            "--pull=never",
            "-u",
            "1234",
            "--env=A=1",
            "--",
            "img",
            "-c",
            "ls --rm",
        ]);
        let command = command_line(&a, &image(None, None)).unwrap();
        let exe = Path::new("/usr/bin/asme");
        let (passwd, group) = (Path::new("/c/passwd"), Path::new("/c/group"));
        let inject = Injection {
            exe,
            user: Some("1234:1234".into()),
            group_add: vec![29, 100],
            account_files: Some((passwd.to_path_buf(), group.to_path_buf())),
            home_tmpfs: Some(("/home/alice".into(), 1234, 1234)),
            home_env: Some("/home/alice".into()),
        };
        let want = [
            "run",
            "-i",
            "-t",
            "--rm",
            "-v",
            "/src:/src",
            "--env=A=1",
            "--mount",
            "type=bind,src=/usr/bin/asme,dst=/.asme-init,readonly",
            "--mount",
            "type=bind,src=/c/passwd,dst=/etc/passwd,readonly",
            "--mount",
            "type=bind,src=/c/group,dst=/etc/group,readonly",
            "--tmpfs",
            "/home/alice:rw,exec,nosuid,nodev,mode=0755,uid=1234,gid=1234",
            "--env",
            "HOME=/home/alice",
            "--user=1234:1234",
            "--group-add=29",
            "--group-add=100",
            "--entrypoint=/.asme-init",
            "--",
            "img",
            "init",
            "--",
            "/bin/sh",
            "-c",
            "ls --rm",
        ];
        assert_eq!(
            rewrite(&a, &command, &inject, engine::Program::Docker),
            want
        );
        // Podman's --tmpfs gives the HOME to the container's user its own way.
        let podman = rewrite(&a, &command, &inject, engine::Program::Podman);
        let tmpfs = "/home/alice:rw,exec,nosuid,nodev,mode=0755,U";
        assert_eq!(podman.iter().position(|o| o == tmpfs), Some(14));
        assert_eq!(podman.len(), want.len());
    }

    #[test]
    fn image_home_env_respects_user_env() {
        let mut img = image(None, Some(&["sh"]));
        img.env = vec!["PATH=/bin".into(), "HOME=/root".into()];
        assert_eq!(image_home_env(&args(&["img"]), &img), Some("/root"));
        assert_eq!(image_home_env(&args(&["-e", "HOME=/x", "img"]), &img), None);
        assert_eq!(image_home_env(&args(&["--env", "HOME", "img"]), &img), None);
        img.env.pop();
        assert_eq!(image_home_env(&args(&["img"]), &img), None);
    }
}

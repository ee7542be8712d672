//! `asme run`: a drop-in `docker run` whose bind-mount writes belong to the owner.
//!
//! Owns the path from the user's argv to the engine's: parse it losslessly (`args`), ask the
//! engine what the image runs and holds (`engine`, `cache`), decide the container's user,
//! account and injected init (`plan`), then hand over to `docker run` by exec, so the user
//! gets docker's own tty, signal and exit-status behaviour.

pub mod args;
pub mod cache;
pub mod engine;
pub mod plan;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::cli::{Cli, Strategy};
use crate::owner::{self, Owner};
use args::RunArgs;
use cache::Cache;
use engine::{Docker, PullPolicy};
use plan::{Injection, RunAs};

/// Runs `docker run ARGS` as asme; returns only on error (otherwise docker replaces us).
pub fn run(cli: &Cli, argv: &[String]) -> Result<()> {
    if matches!(argv.first().map(String::as_str), Some("--help" | "-h")) {
        return Err(Docker::cli().exec(&["run".into(), "--help".into()]));
    }
    let args =
        RunArgs::parse(argv).map_err(|e| anyhow::anyhow!("{e} (see 'docker run --help')"))?;
    let docker = Docker::detect()?;
    let image = docker.ensure_image(&args.image, PullPolicy::parse(args.last("pull"))?)?;
    let command = plan::command_line(&args, &image)?;
    let owner = invoking_owner(cli)?;
    let exe = injected_exe()?;
    let cache = Cache::open()?;
    let facts = cache.image_facts(&image.id, || docker.probe(&image.id, &exe))?;

    // `user` is the only strategy so far, so `auto` is `user`.
    let (Strategy::Auto | Strategy::User) = cli.strategy;
    let say = |note: String| {
        if cli.verbose {
            eprintln!("asme: {note}");
        }
    };
    if args.flag("init") {
        say("--init dropped: asme is the container's init".into());
    }
    let account_files;
    let inject = match plan::run_as(&args, owner, &facts) {
        RunAs::Explicit(user) => {
            say(format!(
                "strategy user: --user {user} given, so the command runs as {user} and what it \
                 writes into bind mounts belongs to that user, not to you ({owner})"
            ));
            Injection {
                exe: &exe,
                user: Some(user),
                group_add: Vec::new(),
                account_files: None,
                home_tmpfs: None,
                home_env: None,
            }
        }
        RunAs::Owner => {
            let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let host_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            let (user_name, group_name) = owner::host_names(owner, &host_passwd, &host_group);
            let account = plan::plan_account(&facts, owner, &user_name, &group_name);
            account_files =
                cache.account_files(&account.accounts.passwd, &account.accounts.group)?;
            let home_env = plan::image_home_env(&args, &image)
                .filter(|home| *home != account.home)
                .map(|_| account.home.clone());
            say(format!(
                "strategy user: the command runs as {} ({owner}), HOME {}{}",
                account.accounts.user.name,
                account.home,
                if account.home_tmpfs { " (tmpfs)" } else { "" }
            ));
            Injection {
                exe: &exe,
                user: Some(owner.to_string()),
                group_add: account.accounts.supplementary_gids.clone(),
                account_files: Some((&account_files.0, &account_files.1)),
                home_tmpfs: account
                    .home_tmpfs
                    .then(|| (account.home.clone(), owner.uid, owner.gid)),
                home_env,
            }
        }
    };
    let final_argv = plan::rewrite(&args, &command, &inject);
    say(format!("docker {}", shell_words(&final_argv)));
    Err(docker.exec(&final_argv))
}

fn invoking_owner(cli: &Cli) -> Result<Owner> {
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let sudo_uid = std::env::var("SUDO_UID").ok();
    let sudo_gid = std::env::var("SUDO_GID").ok();
    Ok(owner::resolve(
        cli.owner,
        &owner::Invocation {
            real: crate::sys::real_ids(),
            sudo_uid: sudo_uid.as_deref(),
            sudo_gid: sudo_gid.as_deref(),
            host_passwd: &host_passwd,
        },
    ))
}

/// The path of this very binary, to be mounted into the container as its init.
fn injected_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the asme binary")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        bail!(
            "the asme binary {} was replaced while running; run it again",
            exe.display()
        );
    }
    Ok(exe)
}

/// Renders argv so that a shell would read it back the same (for `-v` output).
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=/.:,@%+".contains(&b));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

//! `asme run`: a drop-in `docker run` whose bind-mount writes belong to the owner.
//!
//! Owns the path from the user's argv to the engine's: parse it losslessly (`args`), ask the
//! engine what the image runs and holds (`engine`, `cache`), decide the container's user,
//! account and injected init (`plan`), then hand over to `docker run` by exec, so the user
//! gets docker's own tty, signal and exit-status behaviour.

pub mod args;
pub mod cache;
pub mod engine;
pub mod mounts;
pub mod plan;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::agent;
use crate::cli::{Cli, Strategy};
use crate::fix;
use crate::fs;
use crate::init::probe::ImageFacts;
use crate::owner::{self, Owner};
use args::RunArgs;
use cache::Cache;
use engine::{Docker, PullPolicy};
use plan::{Injection, RunAs};

/// What every strategy needs to know about this run.
struct Context<'a> {
    cli: &'a Cli,
    docker: Docker,
    image: engine::ImageConfig,
    facts: ImageFacts,
    owner: Owner,
    exe: PathBuf,
    cache: Cache,
}

impl Context<'_> {
    /// Prints a decision under `-v`.
    fn say(&self, note: impl std::fmt::Display) {
        if self.cli.verbose {
            eprintln!("asme: {note}");
        }
    }
}

/// What a strategy decided: the docker arguments to use and what to inject.
struct Setup<'a> {
    args: RunArgs,
    inject: Injection<'a>,
    /// Idmapped mounts in use: held open until docker ends.
    lease: Option<agent::Lease>,
}

impl<'a> Setup<'a> {
    /// The container runs as docker would run it (its image's USER or `--user`), with asme as
    /// init and nothing else changed.
    fn keep_user(args: &RunArgs, exe: &'a Path) -> Setup<'a> {
        Setup {
            args: args.clone(),
            inject: Injection {
                exe,
                user: args.last("user").map(str::to_string),
                group_add: Vec::new(),
                account_files: None,
                home_tmpfs: None,
                home_env: None,
            },
            lease: None,
        }
    }
}

/// The uid and gid the container runs as: `--user`, else the image's USER, else root.
fn container_ids(ctx: &Context, args: &RunArgs) -> Result<(u32, u32)> {
    let spec = args.last("user").unwrap_or(&ctx.image.user);
    plan::container_ids(spec, &ctx.facts).map_err(|e| anyhow::anyhow!(e))
}

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
    let owner = invoking_owner(cli);
    let exe = injected_exe()?;
    let cache = Cache::open()?;
    fix::complete_pending(cli, &cache.pending_dir());
    let facts = cache.image_facts(&image.id, || docker.probe(&image.id, &exe))?;
    let ctx = Context {
        cli,
        docker,
        image,
        facts,
        owner,
        exe,
        cache,
    };
    if args.flag("init") {
        ctx.say("--init dropped: asme is the container's init");
    }

    let setup = match cli.strategy {
        Strategy::Fix => return run_then_repair(&ctx, &args, &command),
        Strategy::User => user_setup(&ctx, &args)?,
        Strategy::Idmap => idmap_setup(&ctx, &args)?,
        Strategy::Fuse => return run_through_fuse(&ctx, &args, &command),
        // idmap keeps the container's own user, so it is the first choice. An owner who is
        // root needs no mapping, and must not turn an image's non-root USER into root either.
        Strategy::Auto if owner.uid == 0 => {
            ctx.say("strategy auto: you are root, so the container keeps its own user");
            Setup::keep_user(&args, &ctx.exe)
        }
        // Next, where a source refuses idmapped mounts (FUSE, NFS): the same mapping through
        // asme mount. Otherwise the user strategy, which needs nothing from the host.
        Strategy::Auto => match idmap_setup(&ctx, &args) {
            Ok(setup) => setup,
            Err(e) if e.is::<IdmapRefused>() && fs::mount::usable_for_docker().is_ok() => {
                eprintln!(
                    "asme: notice: idmap strategy unavailable ({e:#}); using the fuse strategy \
                     (asme mount)"
                );
                return run_through_fuse(&ctx, &args, &command);
            }
            Err(e) => {
                eprintln!(
                    "asme: notice: idmap strategy unavailable ({e:#}); using the user strategy"
                );
                user_setup(&ctx, &args)?
            }
        },
    };
    let final_argv = plan::rewrite(&setup.args, &command, &setup.inject);
    ctx.say(format_args!("docker {}", shell_words(&final_argv)));
    if let Some(lease) = &setup.lease {
        lease
            .keep_across_exec()
            .context("keeping the idmap lease")?;
    }
    Err(ctx.docker.exec(&final_argv))
}

/// Strategy `fix`: run as plain docker would, then give what the container's user left in
/// the bind mounts back to the owner, however the run ended (exit, `docker kill`, Ctrl-C or
/// SIGTERM to asme). A journal entry covers the case where asme itself is killed outright.
fn run_then_repair(ctx: &Context, args: &RunArgs, command: &[String]) -> Result<()> {
    let container = container_ids(ctx, args)?;
    let cwd = std::env::current_dir().context("reading the working folder")?;
    let sources: Vec<PathBuf> = mounts::bind_mounts(args)
        .iter()
        .map(|b| b.absolute_source(&cwd))
        .collect();
    ctx.say(format_args!(
        "strategy fix: the container runs as {}:{}; afterwards what it left in {} bind mount(s) \
         is given to {}",
        container.0,
        container.1,
        sources.len(),
        ctx.owner
    ));
    let (pid, started) = fix::journal::this_process();
    let pending = fix::journal::Pending {
        pid,
        started,
        owner: ctx.owner.to_string(),
        from: format!("{}:{}", container.0, container.1),
        paths: sources.clone(),
    };
    let entry = fix::journal::Entry::write(&ctx.cache.pending_dir(), &pending)?;
    let status = run_docker_child(ctx, args, command)?;
    match fix::repair(ctx.cli, &sources, ctx.owner, container) {
        Ok(_) => entry.done(),
        Err(e) => eprintln!(
            "asme: giving the bind mounts back failed ({e:#}); the next asme run or asme fix \
             tries again"
        ),
    }
    std::process::exit(status)
}

/// `docker run ARGS` with asme injected and the container's own user, as a child that gets
/// the signals sent to asme (for strategies with work after the run); returns its status.
fn run_docker_child(ctx: &Context, args: &RunArgs, command: &[String]) -> Result<i32> {
    let final_argv = plan::rewrite(args, command, &Setup::keep_user(args, &ctx.exe).inject);
    ctx.say(format_args!("docker {}", shell_words(&final_argv)));
    crate::sys::run_forwarding_signals("docker".as_ref(), &final_argv).context("running docker")
}

/// Strategies that map the container's user to the owner never store files as host root.
fn refuse_root_owner(ctx: &Context, strategy: &str) -> Result<()> {
    if ctx.owner.uid == 0 || ctx.owner.gid == 0 {
        bail!(
            "the {strategy} strategy never stores files as host root; the owner {} is root",
            ctx.owner
        );
    }
    Ok(())
}

/// A bind source whose filesystem refuses idmapped mounts (the case for the fuse strategy).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct IdmapRefused(String);

/// Strategy `fuse`: like idmap, but each bind source is served by `asme mount` (run as the
/// user) with the owner shown as the container's user. docker runs as a child; when it
/// returns, the host's view of each mount is detached, and its server exits when the
/// container lets go of it (at once, or when a `-d` container stops).
fn run_through_fuse(ctx: &Context, args: &RunArgs, command: &[String]) -> Result<()> {
    let container = container_ids(ctx, args)?;
    refuse_root_owner(ctx, "fuse")?;
    let binds = mounts::bind_mounts(args);
    ctx.say(format_args!(
        "strategy fuse: the container keeps uid {}:{}; {} bind mount(s) are served by asme mount, \
         storing its writes as {}",
        container.0,
        container.1,
        binds.len(),
        ctx.owner
    ));
    let cwd = std::env::current_dir().context("reading the working folder")?;
    let map = fs::map::IdMap::single((ctx.owner.uid, ctx.owner.gid), container);
    let mut mounted = FuseMounts(Vec::new());
    for (i, bind) in binds.iter().enumerate() {
        let source = bind.absolute_source(&cwd);
        // Checks it, and creates a missing `-v` source as the owner, as docker would.
        open_source(&source, bind.kind)?;
        let point = ctx
            .cache
            .mount_dir()
            .join(format!("{}-{i}", std::process::id()));
        std::fs::create_dir_all(&point).with_context(|| format!("creating {}", point.display()))?;
        if let Err(e) = fs::mount::spawn_server(&ctx.exe, &map, &source, &point) {
            let _ = std::fs::remove_dir(&point);
            return Err(e);
        }
        mounted.0.push(point);
    }
    let status = run_docker_child(
        ctx,
        &mounts::with_sources(args, &binds, &mounted.0),
        command,
    )?;
    drop(mounted);
    std::process::exit(status)
}

/// The host side of the fuse strategy's mounts: detached (lazily: a `-d` container still
/// uses them) and their folders removed when dropped, whatever happened.
struct FuseMounts(Vec<PathBuf>);

impl Drop for FuseMounts {
    fn drop(&mut self) {
        for point in &self.0 {
            if let Err(e) = fs::mount::umount(point, true) {
                eprintln!("asme: {e:#}");
            }
            let _ = std::fs::remove_dir(point);
        }
    }
}

/// Strategy `user`: run as the owner with a synthesised account.
fn user_setup<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Setup<'a>> {
    let owner = ctx.owner;
    let mut setup = Setup::keep_user(args, &ctx.exe);
    match plan::run_as(args, owner, &ctx.facts) {
        RunAs::Explicit(user) => {
            ctx.say(format_args!(
                "strategy user: --user {user} given, so the command runs as {user} and what it \
                 writes into bind mounts belongs to that user, not to you ({owner})"
            ));
            setup.inject.user = Some(user);
        }
        RunAs::Owner => {
            let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let host_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            let (user_name, group_name) = owner::host_names(owner, &host_passwd, &host_group);
            let account = plan::plan_account(&ctx.facts, owner, &user_name, &group_name);
            let files = ctx
                .cache
                .account_files(&account.accounts.passwd, &account.accounts.group)?;
            setup.inject.home_env = plan::image_home_env(args, &ctx.image)
                .filter(|home| *home != account.home)
                .map(|_| account.home.clone());
            ctx.say(format_args!(
                "strategy user: the command runs as {} ({owner}), HOME {}{}",
                account.accounts.user.name,
                account.home,
                if account.home_tmpfs { " (tmpfs)" } else { "" }
            ));
            setup.inject.user = Some(owner.to_string());
            setup.inject.group_add = account.accounts.supplementary_gids;
            setup.inject.account_files = Some(files);
            setup.inject.home_tmpfs =
                account
                    .home_tmpfs
                    .then_some((account.home, owner.uid, owner.gid));
        }
    }
    Ok(setup)
}

/// Strategy `idmap`: the container keeps its user; each bind mount is swapped for an
/// idmapped copy in which that user's writes are stored as the owner.
fn idmap_setup<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Setup<'a>> {
    let container = container_ids(ctx, args)?;
    let binds = mounts::bind_mounts(args);
    let mut setup = Setup::keep_user(args, &ctx.exe);
    ctx.say(format_args!(
        "strategy idmap: the container keeps uid {}:{}; in {} bind mount(s) its writes are stored as {}",
        container.0,
        container.1,
        binds.len(),
        ctx.owner
    ));
    if binds.is_empty() {
        return Ok(setup);
    }
    refuse_root_owner(ctx, "idmap")?;
    let cwd = std::env::current_dir().context("reading the working folder")?;
    let sources = binds
        .iter()
        .map(|bind| open_source(&bind.absolute_source(&cwd), bind.kind))
        .collect::<Result<Vec<_>>>()?;
    for (bind, source) in binds.iter().zip(&sources) {
        if ctx.cache.idmap_unsupported(source.as_fd()) {
            return Err(anyhow::Error::new(IdmapRefused(format!(
                "{} is on a filesystem that refuses idmapped mounts (remembered)",
                bind.source
            ))));
        }
    }
    let borrowed: Vec<_> = sources.iter().map(|s| s.as_fd()).collect();
    let lease = match agent::lease(&ctx.docker, &ctx.exe, &borrowed, container, ctx.owner) {
        Ok(lease) => lease,
        Err(agent::LeaseError::Unsupported {
            message,
            source_index,
        }) => {
            if let Some(source) = source_index.and_then(|i| sources.get(i)) {
                ctx.cache.remember_idmap_unsupported(source.as_fd());
            }
            let what = source_index
                .and_then(|i| binds.get(i))
                .map_or("a bind mount", |b| &b.source);
            return Err(anyhow::Error::new(IdmapRefused(format!(
                "{what}: {message}"
            ))));
        }
        Err(agent::LeaseError::Other(e)) => return Err(e),
    };
    for (bind, source) in binds.iter().zip(&sources) {
        if let Some(example) = root_owned_folder(source.as_fd()) {
            eprintln!(
                "asme: notice: {} holds folders owned by host root (e.g. {example}); inside they \
                 show as nobody and cannot be written, even by root: give them back with \
                 'asme fix {}'",
                bind.source, bind.source
            );
        }
    }
    setup.args = mounts::with_sources(args, &binds, &lease.paths);
    setup.lease = Some(lease);
    Ok(setup)
}

/// Opens a bind source as the user (O_PATH: no read permission needed, but every folder on
/// the way must be searchable by them). A missing `-v` source is created, as docker does,
/// but owned by the user.
fn open_source(path: &std::path::Path, kind: mounts::BindKind) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let open = || rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty());
    match open() {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOENT) if kind == mounts::BindKind::Volume => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(open()?)
        }
        Err(rustix::io::Errno::NOENT) => bail!(
            "invalid mount config for type \"bind\": bind source path does not exist: {}",
            path.display()
        ),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("opening {}", path.display()))),
    }
}

/// A folder directly in `dir` (or `dir` itself) owned by host root, by name.
fn root_owned_folder(dir: BorrowedFd<'_>) -> Option<String> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let is_root_dir = |st: &rustix::fs::Stat| {
        st.st_uid == 0 && FileType::from_raw_mode(st.st_mode) == FileType::Directory
    };
    if rustix::fs::fstat(dir).is_ok_and(|st| is_root_dir(&st)) {
        return Some(".".into());
    }
    let listing = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut entries = rustix::fs::Dir::read_from(&listing).ok()?;
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if rustix::fs::statat(&listing, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| is_root_dir(&st))
        {
            return Some(name.to_string_lossy().into_owned());
        }
    }
    None
}

/// The owner for this invocation: `--owner`, sudo's user, or the real ids.
pub fn invoking_owner(cli: &Cli) -> Owner {
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let sudo_uid = std::env::var("SUDO_UID").ok();
    let sudo_gid = std::env::var("SUDO_GID").ok();
    owner::resolve(
        cli.owner,
        &owner::Invocation {
            real: crate::sys::real_ids(),
            sudo_uid: sudo_uid.as_deref(),
            sudo_gid: sudo_gid.as_deref(),
            host_passwd: &host_passwd,
        },
    )
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

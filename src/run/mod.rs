//! `asme run`: a drop-in `docker run` whose bind-mount writes belong to the owner.
//!
//! Owns the path from the user's argv to the engine's: parse it losslessly (`args`), ask the
//! engine what the image runs and holds (`engine`, `cache`), let a strategy decide the
//! container's user, mounts and injected init (`strategy`, `plan`), then launch docker: by
//! exec where nothing is left to do afterwards, so the user gets docker's own tty, signal and
//! exit-status behaviour, or as a child where a strategy has work after the run.

pub mod args;
pub mod mounts;
pub mod plan;
pub mod strategy;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::cache::Cache;
use crate::cli::Strategy;
use crate::engine::{Engine, ImageConfig, Program, PullPolicy};
use crate::exit::Exit;
use crate::fix;
use crate::init::probe::ImageFacts;
use crate::owner::{self, Owner, OwnerSpec};
use args::RunArgs;
use strategy::Launch;

/// How the user asked for the run, besides docker's arguments.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub strategy: Strategy,
    pub owner: Option<OwnerSpec>,
    pub program: Program,
    pub verbose: bool,
}

/// What every strategy needs to know about this run.
pub struct Context {
    pub verbose: bool,
    pub engine: Engine,
    pub image: ImageConfig,
    pub facts: ImageFacts,
    pub owner: Owner,
    /// This very binary, mounted into the container as its init.
    pub exe: PathBuf,
    pub cache: Cache,
    /// Where relative bind sources start.
    pub cwd: PathBuf,
    /// What kind of engine answers, and a userns-remap daemon's subordinate base
    /// (`Engine::kind_and_remap`); `None` where the engine cannot say cheaply.
    pub kind: Option<(crate::engine::Kind, Option<(u32, u32)>)>,
}

impl Context {
    /// Prints a decision under `-v`.
    pub fn say(&self, note: impl std::fmt::Display) {
        if self.verbose {
            eprintln!("asme: {note}");
        }
    }
}

/// Runs `docker run ARGV` as asme. Returns docker's exit status where docker ran as a child;
/// where asme became docker (exec), it does not return at all.
pub fn run(request: Request, argv: &[String]) -> Result<Exit> {
    if matches!(argv.first().map(String::as_str), Some("--help" | "-h")) {
        return Err(Engine::cli(request.program).exec(&["run".into(), "--help".into()]));
    }
    let args =
        RunArgs::parse(argv).map_err(|e| anyhow::anyhow!("{e} (see 'docker run --help')"))?;
    let engine = Engine::detect(request.program)?;
    // Asked beside the image's inspection and probe (`docker info` takes milliseconds).
    let asking = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.kind_and_remap())
    };
    let image = engine.ensure_image(&args.image, PullPolicy::parse(args.last("pull"))?)?;
    let command = plan::command_line(&args, &image)?;
    let exe = injected_exe()?;
    let cache = Cache::open()?;
    fix::complete_pending(request.program, request.verbose, &cache.pending_dir());
    let facts = cache.image_facts(&image.id, || engine.probe(&image, &exe))?;
    let ctx = Context {
        verbose: request.verbose,
        engine,
        image,
        facts,
        owner: owner::invoking(request.owner),
        exe,
        cache,
        cwd: std::env::current_dir().context("reading the working folder")?,
        kind: asking.join().unwrap_or(None),
    };
    if args.flag("init") {
        ctx.say("--init dropped: asme is the container's init");
    }
    let (_, prepared) = strategy::prepare(&ctx, &args, request.strategy)?;
    let final_argv = plan::rewrite(
        &prepared.args,
        &command,
        &prepared.inject,
        ctx.engine.program,
    );
    ctx.say(format_args!(
        "{} {}",
        ctx.engine.program.command(),
        shell_words(&final_argv)
    ));
    match prepared.launch {
        Launch::Exec { lease } => {
            if let Some(lease) = &lease {
                lease
                    .keep_across_exec()
                    .context("keeping the idmap lease")?;
            }
            Err(ctx.engine.exec(&final_argv))
        }
        Launch::Child { after } => {
            let status = ctx.engine.run_child(&final_argv);
            after();
            Ok(Exit::Status(status?))
        }
    }
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

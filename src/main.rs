//! asme's entry point: parse, dispatch, print one error line, exit.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory as _, Parser as _};

use asme::cache::Cache;
use asme::chown::SummaryTo;
use asme::cli::{AgentCommand, Cli, Command, ContextCommand, PluginCommand};
use asme::cli_plugin::{self, Invocation};
use asme::engine::Engine;
use asme::exit::Exit;
use asme::{agent, doctor, fix, fs, init, manual, run};

fn main() -> ExitCode {
    let args = match command_line() {
        Ok(args) => args,
        Err(exit) => return exit.into(),
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // --help, --version, and no command at all (`asme`, `docker asme`): clap's whole text.
        Err(err)
            if !err.use_stderr()
                || err.kind()
                    == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            err.exit()
        }
        Err(err) => {
            eprintln!("asme: {}", one_line(&err));
            return usage_error(&args).into();
        }
    };
    // `asme run` fails as `docker run` does; the other commands as tools usually do.
    let failed = match cli.command {
        Command::Run { .. } => Exit::RunFailed,
        _ => Exit::Failure,
    };
    match dispatch(&cli) {
        Ok(exit) => exit.into(),
        Err(err) => {
            // One line, the whole chain of causes (ripgrep, fd).
            eprintln!("asme: {err:#}");
            failed.into()
        }
    }
}

fn dispatch(cli: &Cli) -> Result<Exit> {
    let done = |()| Exit::Success;
    match &cli.command {
        Command::Init { argv } => Ok(init::run(argv)),
        Command::Probe { program } => init::probe::main(program.as_deref()).map(done),
        Command::Run { args } => run::run(
            run::Request {
                strategy: cli.strategy,
                owner: cli.owner,
                program: cli.engine,
                verbose: cli.verbose,
            },
            args,
        ),
        Command::Fix(args) => {
            if let Ok(cache) = Cache::open() {
                fix::complete_pending(cli.engine, cli.verbose, &cache.pending_dir());
            }
            let settings = fix::Settings {
                program: cli.engine,
                verbose: cli.verbose,
                summary: if args.repair {
                    SummaryTo::StderrWhenNews
                } else {
                    SummaryTo::Stdout
                },
            };
            fix::main(settings, cli.owner, args).map(Exit::from_ok)
        }
        Command::Mount(m) => fs::mount::main(&fs::mount::MountRequest {
            source: m.source.clone(),
            mountpoint: m.mountpoint.clone(),
            map: m.map.clone(),
            options: m.options.clone(),
            foreground: m.foreground,
            notify_ready: m.notify_ready,
            serve_as: m.serve_as,
            enter: m.enter_namespaces_of,
        })
        .map(done),
        Command::Umount {
            mountpoint,
            lazy,
            enter_namespaces_of,
        } => fs::mount::umount(mountpoint, *lazy, *enter_namespaces_of).map(done),
        Command::Doctor { path, json } => {
            doctor::main(cli.engine, cli.owner, path.as_deref(), *json).map(Exit::from_ok)
        }
        Command::DoctorWrite { path } => doctor::write_probe(path).map(done),
        Command::Plugin { command } => plugin(cli, command).map(done),
        Command::Proxy { socket } => {
            asme::proxy::main(cli.engine, asme::owner::invoking(cli.owner), socket.clone())
                .map(done)
        }
        Command::Context { command } => context(cli, command).map(done),
        Command::Install(_) => install_cli_plugin().map(done),
        Command::Uninstall(_) => uninstall_cli_plugin().map(done),
        Command::Completions { shell } => {
            let script = manual::completions(*shell);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                // A reader that has had enough (`| head`) is no failure.
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
                _ => Ok(Exit::Success),
            }
        }
        Command::Manpages { dir } => manual::write_pages(dir).map(|_| Exit::Success),
        Command::Agent {
            command: AgentCommand::Serve { daemon, run_dir },
        } => agent::server::serve(daemon, run_dir).map(done),
        Command::Agent {
            command: AgentCommand::Stop,
        } => Engine::detect(cli.engine)
            .and_then(|e| agent::stop(&e))
            .map(done),
    }
}

fn plugin(cli: &Cli, command: &PluginCommand) -> Result<()> {
    use asme::plugin::install;
    if let PluginCommand::Serve = command {
        return install::serve();
    }
    let engine = Engine::detect(cli.engine)?;
    match command {
        PluginCommand::Install => {
            let exe = std::env::current_exe()?;
            install::install(&engine, &exe)
        }
        PluginCommand::Uninstall => install::uninstall(&engine),
        PluginCommand::Status => {
            println!("{}", install::status(&engine)?.describe());
            Ok(())
        }
        PluginCommand::Serve => unreachable!("served above"),
    }
}

fn install_cli_plugin() -> Result<()> {
    let exe = std::env::current_exe()?;
    let link = cli_plugin::install(&cli_plugin::user_dir()?, &exe)?;
    eprintln!("docker asme: {} -> {}", link.display(), exe.display());
    Ok(())
}

fn uninstall_cli_plugin() -> Result<()> {
    let dir = cli_plugin::user_dir()?;
    match cli_plugin::uninstall(&dir)? {
        Some(link) => eprintln!("removed {}", link.display()),
        None => eprintln!("docker asme was not installed in {}", dir.display()),
    }
    if let Some(system) = cli_plugin::system_link() {
        eprintln!(
            "{} (the package's) stays until the package goes",
            system.display()
        );
    }
    Ok(())
}

fn context(cli: &Cli, command: &ContextCommand) -> Result<()> {
    use asme::proxy::{self, context};
    let engine = Engine::detect(cli.engine)?;
    match command {
        ContextCommand::Install { socket } => {
            let socket = match socket {
                Some(socket) => std::path::absolute(socket)?,
                None => proxy::default_socket()?,
            };
            let exe = std::env::current_exe()?;
            eprint!("{}", context::install(&engine, &socket, &exe)?);
            Ok(())
        }
        ContextCommand::Uninstall => context::uninstall(&engine),
    }
}

/// asme's command line: as typed, or from under docker's plugin layer (`docker asme ...`
/// runs this binary as docker-asme). Err: done already (the plugin's metadata), or failed.
fn command_line() -> Result<Vec<OsString>, Exit> {
    match cli_plugin::invocation(std::env::args_os().collect()) {
        Ok(Invocation::Args(args)) => Ok(args),
        Ok(Invocation::Metadata) => {
            println!("{}", cli_plugin::metadata());
            Err(Exit::Success)
        }
        Ok(Invocation::Reexec { args, env }) => {
            eprintln!("asme: {:#}", cli_plugin::reexec(&args, &env));
            Err(usage_error(&args))
        }
        Err(err) => {
            eprintln!("asme: {err:#}");
            Err(Exit::Usage)
        }
    }
}

/// clap's error as one line: clap adds usage and a tip, and lists missing arguments below
/// its first line.
fn one_line(err: &clap::Error) -> String {
    let message = err.to_string();
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.strip_suffix(':') {
        Some(first) => {
            let missing: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
            format!("{first}: {}", missing.join(", "))
        }
        None => first.to_string(),
    }
}

/// The exit status for a command line clap refused: `docker run`'s 125 when it was meant for
/// `asme run`, clap's 2 otherwise.
fn usage_error(args: &[OsString]) -> Exit {
    let matches = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args);
    match matches.as_ref().ok().and_then(|m| m.subcommand_name()) {
        Some("run") => Exit::RunFailed,
        _ => Exit::Usage,
    }
}

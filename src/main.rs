//! asme's entry point: parse, dispatch, print one error line, exit.

use std::process::ExitCode;

use clap::Parser as _;

use asme::cli::{AgentCommand, Cli, Command};
use asme::run::engine::Docker;
use asme::{agent, doctor, fix, init, run};

/// docker run's own exit code for errors of the run itself (not of the command).
const EXIT_RUN_FAILED: u8 = 125;

/// Exit code when a command other than `run` fails, or did part of its work.
const EXIT_FAILURE: u8 = 1;

/// Exit code for a command line asme cannot parse (clap's convention).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            // clap adds usage and a tip; asme's errors are one line.
            let message = err.to_string();
            let first = message.lines().next().unwrap_or_default();
            eprintln!("asme: {}", first.strip_prefix("error: ").unwrap_or(first));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match cli.command {
        Command::Init { ref argv } => return exit_with(init::run(argv)),
        Command::Probe => init::probe::main(),
        Command::Run { ref args } => run::run(&cli, args),
        Command::Fix(ref args) => {
            if let Ok(cache) = asme::run::cache::Cache::open() {
                fix::complete_pending(&cli, &cache.pending_dir());
            }
            return match fix::main(&cli, args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_FAILURE),
                Err(err) => {
                    eprintln!("asme: {err:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            };
        }
        Command::Mount(ref m) => {
            let req = asme::fs::mount::MountRequest {
                source: m.source.clone(),
                mountpoint: m.mountpoint.clone(),
                map: m.map.clone(),
                options: m.options.clone(),
                foreground: m.foreground,
                notify_ready: m.notify_ready,
            };
            return exit_code(asme::fs::mount::main(&req));
        }
        Command::Umount {
            ref mountpoint,
            lazy,
        } => return exit_code(asme::fs::mount::umount(mountpoint, lazy)),
        Command::Doctor { ref path, json } => return doctor::main(&cli, path.as_deref(), json),
        Command::DoctorWrite { ref path } => doctor::write_probe(path),
        Command::Agent {
            command: AgentCommand::Serve,
        } => agent::server::serve(),
        Command::Agent {
            command: AgentCommand::Stop,
        } => Docker::detect().and_then(|d| agent::stop(&d)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain of causes (ripgrep, fd).
            eprintln!("asme: {err:#}");
            ExitCode::from(EXIT_RUN_FAILED)
        }
    }
}

/// Commands other than `run`: one error line and exit 1.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("asme: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn exit_with(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(EXIT_RUN_FAILED))
}

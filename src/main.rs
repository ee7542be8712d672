//! asme's entry point: parse, dispatch, print one error line, exit.

use std::process::ExitCode;

use clap::Parser;

use asme::cli::{Cli, Command};
use asme::{init, run};

/// docker run's own exit code for errors of the run itself (not of the command).
const EXIT_RUN_FAILED: u8 = 125;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { ref argv } => return exit_with(init::run(argv)),
        Command::Probe => init::probe::main(),
        Command::Run { ref args } => run::run(&cli, args),
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

fn exit_with(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(EXIT_RUN_FAILED))
}

//! asme's exit statuses, in one place (fd's `exit_codes.rs`).
//!
//! `asme run` and the init inside the container answer as `docker run` does: the command's own
//! status (128+N after signal N), 125 when the run itself failed (asme's own errors
//! included), 126/127 when the command cannot be executed or is not found. Other commands
//! exit 0, 1 when they failed or did only part of their work, 2 for a command line that
//! cannot be parsed.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    /// A command other than `run` failed, or did part of its work.
    Failure,
    /// A command line that cannot be parsed (clap's convention), for commands other than run.
    Usage,
    /// `docker run`'s own: the run itself failed, not the command.
    RunFailed,
    /// The command was found but could not be executed.
    CannotExecute,
    /// The command was not found.
    NotFound,
    /// A child's status, passed through (already 128+N if signal N killed it).
    Status(i32),
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::RunFailed => 125,
            Exit::CannotExecute => 126,
            Exit::NotFound => 127,
            Exit::Status(status) => status,
        }
    }

    /// 0 for true, [`Exit::Failure`] for false.
    pub fn from_ok(ok: bool) -> Exit {
        if ok { Exit::Success } else { Exit::Failure }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(u8::try_from(exit.code()).unwrap_or(125))
    }
}

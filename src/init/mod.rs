//! The in-container init: asme's binary as the container's entrypoint.
//!
//! It owns what happens inside the container before and while the command runs: the strategy's
//! setup steps, then the PID 1 duties (forward signals, reap zombies, exit with the command's
//! status), modelled on tini. What the container should look like (user, mounts, account
//! files) was decided on the host by `run`; the init only carries it out.

pub mod probe;

use std::ffi::OsString;
use std::io;

use nix::sys::signal::Signal;

use crate::exit::Exit;
use crate::sys;

/// Runs the container's command as PID 1's child and returns the status to exit with.
///
/// The command's own exec errors are reported like `docker run` reports them, with the same
/// exit codes, since asme now stands where docker's exec used to.
pub fn run(argv: &[OsString]) -> Exit {
    match supervise(argv) {
        Ok(status) => Exit::Status(status),
        Err(InitError::Exec(e)) => {
            let program = argv
                .first()
                .map(|p| p.to_string_lossy())
                .unwrap_or_default();
            let (what, status) = match e.kind() {
                io::ErrorKind::NotFound => (
                    "executable file not found in $PATH".to_string(),
                    Exit::NotFound,
                ),
                _ => (e.to_string(), Exit::CannotExecute),
            };
            eprintln!("asme: exec \"{program}\": {what}");
            status
        }
        Err(e) => {
            eprintln!("asme: init: {e}");
            Exit::CannotExecute
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("{0}")]
    Exec(#[source] io::Error),
    #[error("configuring signals: {0}")]
    Signals(#[source] nix::Error),
    #[error("registering as subreaper: {0}")]
    Subreaper(#[source] io::Error),
    #[error("waiting for children: {0}")]
    Wait(#[source] nix::Error),
}

/// tini's main loop: block signals, spawn, then wait for a signal, forward it or reap.
fn supervise(argv: &[OsString]) -> Result<i32, InitError> {
    let signals = sys::block_async_signals().map_err(InitError::Signals)?;
    if !sys::is_pid1() {
        // Under `docker run --init` or another init we are not PID 1; orphans must still come
        // back to us to be reaped.
        sys::register_subreaper().map_err(InitError::Subreaper)?;
    }
    let child = sys::spawn_command(argv).map_err(InitError::Exec)?;
    loop {
        let signal = sys::wait_signal(&signals).map_err(InitError::Wait)?;
        if signal != Signal::SIGCHLD {
            if let Err(e) = sys::forward_signal(child, signal) {
                eprintln!("asme: warning: forwarding {signal} to the command: {e}");
            }
            continue;
        }
        // One SIGCHLD may stand for many exits: reap until none is left.
        while let Some(reaped) = sys::reap_one().map_err(InitError::Wait)? {
            if reaped.pid == child {
                return Ok(reaped.status);
            }
        }
    }
}

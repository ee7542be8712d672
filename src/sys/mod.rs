//! Every syscall asme makes, behind small typed functions.
//!
//! Callers get `io::Result`/`nix::Result` and plain Rust types; every `unsafe` block in the
//! crate lives here with the reason it holds. Policy (what to block, when to reap) belongs to
//! the callers, mostly `init`.

pub mod batch;
pub mod fd;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod socket;
pub mod uring;
pub mod watch;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Signals that are raised by a faulting instruction: blocking them would make the kernel
/// kill us anyway, so they keep their default action (tini `configure_signals`).
const SYNCHRONOUS: [Signal; 6] = [
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGSYS,
];

/// Blocks every asynchronous signal for this thread and returns the set that was blocked.
///
/// A blocked signal is queued rather than dropped even for a namespace's PID 1 with the default
/// disposition (kernel `sig_ignored` checks the mask first), so `wait_signal` sees them all.
pub fn block_async_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::all();
    for sig in SYNCHRONOUS {
        set.remove(sig);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// Waits until one of the blocked signals in `set` is pending and takes it.
pub fn wait_signal(set: &SigSet) -> nix::Result<Signal> {
    set.wait()
}

/// Sends `sig` to one process; a process that is already gone is not an error.
pub fn forward_signal(pid: Pid, sig: Signal) -> nix::Result<()> {
    match nix::sys::signal::kill(pid, sig) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: Pid,
    /// Exit status as a shell reports it: the code, or 128+N after signal N.
    pub status: i32,
}

/// Reaps one exited child without blocking; `None` when no child has exited (or none is left).
pub fn reap_one() -> nix::Result<Option<Reaped>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => return Ok(Some(Reaped { pid, status: code })),
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                return Ok(Some(Reaped {
                    pid,
                    status: 128 + sig as i32,
                }));
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
            // Stopped/continued children are not exits; look again.
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Makes this process the reaper of orphaned descendants when it is not PID 1
/// (prctl(2) PR_SET_CHILD_SUBREAPER), so zombies still come to us.
pub fn register_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Whether this process is PID 1 of its PID namespace.
pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// Starts `argv` as the command child: its own process group, in the foreground of the
/// controlling terminal if there is one, with the default signal mask and dispositions.
///
/// # Errors
/// The exec error of the child (std reports it through a close-on-exec pipe), e.g. `NotFound`.
pub fn spawn_command(argv: &[OsString]) -> io::Result<Pid> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (sigaction, tcsetpgrp, getpgrp, sigprocmask); it allocates
    // nothing.
    unsafe {
        command.pre_exec(prepare_child);
    }
    let child = command.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// In the child: become the terminal's foreground process group (tini `isolate_child`), then
/// give the command the signal state of a fresh process.
///
/// A background group calling tcsetpgrp(3) gets SIGTTOU, so it is ignored for the call and
/// put back to the default afterwards. ENOTTY (no tty, e.g. `docker run` without `-t`) and
/// ENXIO are expected. The mask is cleared here because std does not always do it: the init
/// blocks every signal, and a command inheriting that mask would never die of SIGTERM.
fn prepare_child() -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_IGN/SIG_DFL runs no handler code, so no handler can observe
    // inconsistent state.
    unsafe { sigaction(Signal::SIGTTOU, &ignore) }?;
    let stdin = rustix::stdio::stdin();
    let result = rustix::termios::tcsetpgrp(stdin, rustix::process::getpgrp());
    // SAFETY: as above.
    unsafe {
        sigaction(Signal::SIGTTOU, &default)?;
        sigaction(Signal::SIGTTIN, &default)?;
    }
    match result {
        Ok(()) | Err(rustix::io::Errno::NOTTY) | Err(rustix::io::Errno::NXIO) => {}
        Err(e) => return Err(e.into()),
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}

/// The real uid and gid of this process.
pub fn real_ids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

/// Makes this process `uid`:`gid` for good (real, effective and saved ids; `gid` its only
/// group). Call it before any thread starts: the kernel changes the ids of the calling
/// thread only.
pub fn become_user(uid: u32, gid: u32) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[gid])?;
    setresgid(gid, gid, gid)?;
    setresuid(uid, uid, uid)
}

/// Runs `program` with `args` as a child and waits for it, passing on the signals someone
/// sends to us (TERM, INT, HUP, QUIT, USR1, USR2). Signals the terminal sends to the whole
/// foreground group (Ctrl-C, Ctrl-\) already reach the child, so they are not sent twice.
/// Returns the child's status (128+N if signal N killed it).
pub fn run_forwarding_signals(program: &OsStr, args: &[String]) -> io::Result<i32> {
    let mut set = SigSet::empty();
    for sig in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        set.add(sig);
    }
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: sigprocmask is async-signal-safe; the closure allocates nothing.
    unsafe {
        command.pre_exec(move || Ok(sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?));
    }
    let spawned = command.spawn();
    let result = spawned.and_then(|child| {
        let pid = Pid::from_raw(child.id() as i32);
        loop {
            let (signal, sent_by_process) = wait_signal_info(&set)?;
            if signal == Signal::SIGCHLD {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if sent_by_process {
                forward_signal(pid, signal)?;
            }
        }
    });
    // Signals that arrive after the child ended are for us again.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    result
}

/// What `run_forwarding_signals` passes on.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Waits for one of the blocked signals in `set`; says whether a process sent it (kill(2),
/// sigqueue(3): si_code <= 0) rather than the kernel (a terminal, a child's exit).
fn wait_signal_info(set: &SigSet) -> io::Result<(Signal, bool)> {
    loop {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: `set` is a valid sigset_t for the call's duration and `info` is writable
        // memory of the right size; the kernel fills it before we read it.
        let signo = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
        if signo < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        // SAFETY: sigwaitinfo succeeded, so `info` is initialised.
        let code = unsafe { info.assume_init() }.si_code;
        let signal = Signal::try_from(signo).map_err(io::Error::from)?;
        return Ok((signal, code <= 0));
    }
}

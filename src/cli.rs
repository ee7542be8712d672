//! Command-line types and help text (clap derive). No logic: `main` dispatches on these.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::Program;
use crate::owner::OwnerSpec;

/// The version and the build id (a hash of the sources), so a bug report names the exact build.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (build ",
    env!("ASME_BUILD"),
    ")"
);

/// Run containers as me: what a container writes into your folders stays yours.
#[derive(Debug, Clone, Parser)]
#[command(name = "asme", version = VERSION, max_term_width = 100)]
pub struct Cli {
    /// How bind-mount writes are made to belong to the owner.
    #[arg(long, env = "ASME_STRATEGY", value_enum, default_value_t = Strategy::Auto)]
    pub strategy: Strategy,

    /// Whose files they should be [default: you; under sudo, the user who ran sudo].
    #[arg(long, env = "ASME_OWNER", value_name = "UID[:GID]")]
    pub owner: Option<OwnerSpec>,

    /// Container engine to drive [default: podman where CONTAINER_HOST is set without
    /// DOCKER_HOST, or where only podman is installed; else docker]
    #[arg(long, env = "ASME_ENGINE", value_enum, default_value_t = Program::from_environment(), hide_default_value = true)]
    pub engine: Program,

    /// Print the final engine command line (and what asme decided) on stderr.
    #[arg(short, long)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run a container like `docker run`; files it writes into bind mounts belong to you.
    ///
    /// Everything after `run` is docker's, passed through verbatim: asme run -it --rm -v
    /// "$PWD:/src" -w /src IMAGE make
    #[command(disable_help_flag = true)]
    Run {
        /// `docker run` arguments: [OPTIONS] IMAGE [COMMAND] [ARG...]
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "DOCKER RUN ARGS"
        )]
        args: Vec<String>,
    },

    /// (inside the container) asme as PID 1: set up, run the command, forward signals, reap.
    #[command(hide = true)]
    Init {
        /// The command to run, after `--`.
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },

    /// (inside a throwaway container) print what an image holds that asme needs, as JSON.
    #[command(hide = true)]
    Probe {
        /// The image's program (ENTRYPOINT, else CMD), to read as a script.
        program: Option<String>,
    },

    /// Check what this host offers asme, with a live test of each strategy.
    ///
    /// Reports the engine, kernel, PATH's filesystem, FUSE and security modules, runs each
    /// strategy for real on a temp folder in PATH, and says which one `auto` will use. Exits 1
    /// when no strategy works. Removes everything it creates.
    Doctor {
        /// The folder whose filesystem is tested [default: the working folder].
        path: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },

    /// (inside doctor's self-test container) create the file PATH, print our uid:gid.
    #[command(hide = true)]
    DoctorWrite { path: PathBuf },

    /// Give a tree that containers left root-owned back to its owner, safely, without sudo.
    ///
    /// Never follows a symlink, never changes a hard-linked file or enters another
    /// filesystem unless asked, and acts on exactly what it examined. Without root, the walk
    /// runs as root in asme's agent container (or, where it cannot run, a throwaway one).
    Fix(FixArgs),

    /// Show SOURCE at MOUNTPOINT with owners mapped (FUSE; what bindfs does).
    ///
    /// By default you (on SOURCE) are shown as root, and what root creates in the mount is
    /// yours on SOURCE: bind-mount MOUNTPOINT into a root container. Ids the map does not name
    /// pass through unchanged. Returns once the mount is up; the server runs until
    /// `asme umount MOUNTPOINT` or SIGTERM.
    Mount(MountArgs),

    /// Unmount an `asme mount` (also one whose server was killed).
    Umount {
        mountpoint: std::path::PathBuf,
        /// Detach it now even if busy; it goes when the last user lets go.
        #[arg(short = 'z', long)]
        lazy: bool,
        /// (asme run on rootless Docker) in the namespaces of this daemon process.
        #[arg(long, hide = true, value_name = "PID")]
        enter_namespaces_of: Option<u32>,
    },

    /// The volume driver: `docker volume create -d asme -o source=DIR` (a managed plugin).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },

    /// The idmap agent: the container that makes idmapped mounts for `asme run`.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },

    /// A Docker API endpoint for every client: bind mounts of your folders written as you.
    ///
    /// Point a client at it with DOCKER_HOST=unix://SOCKET or `asme context install`.
    /// Container creation is rewritten (your folders become volumes of asme's driver);
    /// everything else passes through.
    Proxy {
        /// Where to listen [default: $XDG_RUNTIME_DIR/asme/docker.sock, or asme's cache
        /// folder]
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
    },

    /// The docker context `asme`, pointing at `asme proxy`'s socket.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },

    /// Install what makes asme part of docker for you: `docker asme ...` (a CLI plugin).
    ///
    /// --cli-plugin links docker-asme in your Docker CLI's plugin folder
    /// ($DOCKER_CONFIG/cli-plugins, by default ~/.docker/cli-plugins) to this binary.
    Install(InstallArgs),

    /// Remove what `asme install` installed.
    ///
    /// The volume driver, the context and the agent have their own: `asme plugin uninstall`,
    /// `asme context uninstall`, `asme agent stop`.
    Uninstall(InstallArgs),

    /// Print the completion script for SHELL on stdout.
    ///
    /// bash: asme completions bash > ~/.local/share/bash-completion/completions/asme;
    /// zsh: asme completions zsh > a folder of your $fpath, as _asme;
    /// fish: asme completions fish > ~/.config/fish/completions/asme.fish
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// (packaging) write asme's man pages, asme.1 and one per subcommand, into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// `docker asme ...`: asme as a Docker CLI plugin, for you.
    #[arg(long, required = true)]
    pub cli_plugin: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ContextCommand {
    /// Create the context (and, where systemd runs for you, a socket-activated user unit).
    Install {
        /// The proxy's socket [default: as `asme proxy`]
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
    },
    /// Remove the context and the units.
    Uninstall,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FixArgs {
    /// Whose the entries become: UID[:GID], or `from-path` for the owner of each PATH
    /// [default: you; under sudo, the user who ran sudo]
    #[arg(long, value_name = "UID[:GID]|from-path")]
    pub owner: Option<String>,

    /// Give back the entries of this user (or group) instead of root's.
    #[arg(long, value_name = "UID[:GID]", conflicts_with = "all")]
    pub from: Option<String>,

    /// Also take entries owned by any other user or group, not only root's.
    #[arg(long)]
    pub all: bool,

    /// Say what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Enter filesystems mounted inside PATH.
    #[arg(long)]
    pub cross_mounts: bool,

    /// Change hard-linked files too (another name of theirs may be outside PATH).
    #[arg(long)]
    pub follow_hardlinks: bool,

    /// A repair after `asme run`: the summary goes to stderr, and only when something changed
    /// (the command's own output must stay as it was).
    #[arg(long, hide = true)]
    pub repair: bool,

    /// (inside asme's container) DEV:INO that each PATH must have.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub expect: Vec<String>,

    /// Folders to give back.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Id map, bindfs's syntax: user1/user2:@group1/@group2 (names or numbers); SOURCE's
    /// user1 is shown as user2, and what user2 creates is stored as user1
    /// [default: you/root:@your group/@root]
    #[arg(long, value_name = "SPEC")]
    pub map: Option<String>,

    /// Stay in the foreground (the mount lives as long as this process).
    #[arg(short, long)]
    pub foreground: bool,

    /// Mount options, comma-separated: ro, allow_other (default), allow_root, private,
    /// timeout=SECONDS (cache names and attributes that long, unwatched), nowatch (cache 1 s,
    /// unwatched), nopassthrough, nouring, poll=MICROSECONDS (how long an io_uring queue
    /// looks for its next request before it sleeps; 200, 0 for none), dev, suid,
    /// threads=N. By default SOURCE is watched and
    /// the cache kept 60 s, with changes made to SOURCE directly seen at once.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,

    /// (the detached server) report readiness on stdout.
    #[arg(long, hide = true)]
    pub notify_ready: bool,

    /// (root only; the volume driver) serve as UID:GID once mounted, for a SOURCE only
    /// that user may enter (a FUSE share without allow_other). No passthrough then.
    #[arg(long, hide = true, value_name = "UID:GID")]
    pub serve_as: Option<crate::owner::Owner>,

    /// (asme run on rootless Docker) mount and serve in the user and mount namespaces of
    /// this daemon process, which must be the user's own.
    #[arg(long, hide = true, value_name = "PID")]
    pub enter_namespaces_of: Option<u32>,

    /// The folder to show.
    pub source: std::path::PathBuf,
    /// Where to show it (an empty folder).
    pub mountpoint: std::path::PathBuf,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AgentCommand {
    /// Stop the agent and remove its container and image (it starts again when needed).
    Stop,
    /// (inside the agent container) serve requests.
    #[command(hide = true)]
    Serve {
        /// The engine daemon's process name: the agent works in its mount namespace.
        #[arg(long, default_value = "dockerd")]
        daemon: String,
        /// This engine's agent folder (socket, lock, leases).
        #[arg(long, default_value = crate::agent::protocol::DEFAULT_RUN_DIR)]
        run_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PluginCommand {
    /// Build the plugin `asme` from this binary and enable it (nothing is pulled; no sudo).
    Install,
    /// Disable and remove the plugin (the folders of its volumes are never touched).
    Uninstall,
    /// Say whether this build's plugin is installed and enabled.
    Status,
    /// (inside the plugin) answer dockerd's volume requests.
    #[command(hide = true)]
    Serve,
}

/// How ownership of bind-mount writes is achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// The best strategy that works here.
    Auto,
    /// Keep the container's user (root by default); each bind mount becomes a kernel idmapped
    /// mount, so what that user writes is stored as the owner.
    Idmap,
    /// Keep the container's user; each bind mount is served through `asme mount` (FUSE), where
    /// that user's writes are stored as the owner. For sources that refuse idmapped mounts.
    Fuse,
    /// Run the command as the owner, with an account (name, group, writable HOME) made for it.
    User,
    /// Run as plain docker would, then give everything the container left in bind mounts back
    /// to the owner (`asme fix`'s walker), however the run ends.
    Fix,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn everything_after_run_is_dockers() {
        let cli = Cli::try_parse_from([
            "asme",
            "-v",
            "--owner",
            "1234:55",
            "run",
            "-it",
            "--rm",
            "-v",
            "/a:/b",
            "img",
            "sh",
            "-c",
            "ls --help",
            "--",
            "-v",
        ])
        .unwrap();
        assert!(cli.verbose);
        assert_eq!(
            cli.owner,
            Some(OwnerSpec {
                uid: 1234,
                gid: Some(55)
            })
        );
        let Command::Run { args } = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args,
            [
                "-it",
                "--rm",
                "-v",
                "/a:/b",
                "img",
                "sh",
                "-c",
                "ls --help",
                "--",
                "-v"
            ]
        );
    }

    #[test]
    fn help_after_run_goes_to_docker() {
        let cli = Cli::try_parse_from(["asme", "run", "--help"]).unwrap();
        let Command::Run { args } = cli.command else {
            panic!("not run")
        };
        assert_eq!(args, ["--help"]);
    }

    #[test]
    fn bad_owner_is_refused() {
        let err = Cli::try_parse_from(["asme", "--owner", "bob", "run", "img"]).unwrap_err();
        assert!(err.to_string().contains("invalid owner 'bob'"), "{err}");
    }
}

//! asme as a Docker CLI plugin: `docker asme ...`.
//!
//! The docker CLI runs an executable named `docker-asme` from its plugin folders: first as
//! `docker-asme docker-cli-plugin-metadata` (for `docker --help` and `docker info`), then as
//! `docker-asme [DOCKER'S GLOBAL OPTIONS] asme ARGS...`: docker/cli's
//! `cli-plugins/manager.PluginRunCommand` hands the plugin all of its own arguments, global
//! options included, and passes the plugin's exit status through. This module turns such a
//! command line back into asme's, and links `docker-asme` for a user (`asme install
//! --cli-plugin`); the package links it for everyone. Parsing and dispatch stay in `main`.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// The plugin's name: `docker asme`.
pub const NAME: &str = "asme";

/// The executable's name the docker CLI looks for.
pub const FILE_NAME: &str = "docker-asme";

/// The argument the docker CLI asks a plugin's metadata with.
const METADATA_COMMAND: &str = "docker-cli-plugin-metadata";

/// The program name asme's help and usage show when run as `docker asme`.
const DISPLAY_NAME: &str = "docker asme";

/// Where the Debian package links `docker-asme`: the first of the docker CLI's system-wide
/// plugin folders that Debian's own docker packages use.
pub const SYSTEM_DIR: &str = "/usr/libexec/docker/cli-plugins";

/// What the process was started as.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// asme's own command line, program name first: as typed, or from under docker's plugin
    /// layer (the program name is then "docker asme", so help and errors say so).
    Args(Vec<OsString>),
    /// `docker-asme docker-cli-plugin-metadata`: print [`metadata`].
    Metadata,
    /// `docker [GLOBAL OPTIONS] asme ARGS`: asme's command line, and docker's global options
    /// as the environment variables that say the same, to run asme again with (an empty
    /// value: unset).
    Reexec {
        args: Vec<OsString>,
        env: Vec<(&'static str, OsString)>,
    },
}

/// Reads the process's command line (`std::env::args_os()`) as asme's or docker's plugin's.
///
/// # Errors
/// A docker global option asme cannot honour (TLS: asme needs a local engine).
pub fn invocation(argv: Vec<OsString>) -> Result<Invocation> {
    let as_plugin = argv
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .is_some_and(|name| name == FILE_NAME);
    if argv.get(1).is_some_and(|arg| arg == METADATA_COMMAND) {
        return Ok(Invocation::Metadata);
    }
    if !as_plugin {
        return Ok(Invocation::Args(argv));
    }
    let mut env = Vec::new();
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == NAME {
            let args = std::iter::once(OsString::from(DISPLAY_NAME))
                .chain(rest.cloned())
                .collect();
            // docker's --context outranks a DOCKER_HOST of the environment (-H outranks both).
            let named = |name: &str| env.iter().any(|(n, _)| *n == name);
            if named("DOCKER_CONTEXT") && !named("DOCKER_HOST") {
                env.push(("DOCKER_HOST", OsString::new()));
            }
            return Ok(if env.is_empty() {
                Invocation::Args(args)
            } else {
                Invocation::Reexec { args, env }
            });
        }
        let Some(text) = arg.to_str().filter(|t| t.starts_with('-')) else {
            break; // not docker's plugin call: `docker-asme run ...` typed by hand
        };
        let (flag, attached) = split_flag(text);
        let Some(option) = GLOBAL_OPTIONS.iter().find(|o| o.names.contains(&flag)) else {
            break;
        };
        if option.refused {
            bail!(
                "docker's option {flag} is for a remote engine; asme needs a local one (a unix \
                 socket): leave it out"
            );
        }
        let value = match (option.takes_value, attached) {
            (false, _) => None,
            (true, Some(value)) => Some(OsString::from(value)),
            (true, None) => Some(
                rest.next()
                    .cloned()
                    .with_context(|| format!("docker's option {flag} needs a value"))?,
            ),
        };
        // The others (-D, --log-level) set docker's own logging: nothing of asme's.
        if let (Some(name), Some(value)) = (option.env, value) {
            env.push((name, value));
        }
    }
    // Run by hand under the plugin's name: asme's command line as it is.
    Ok(Invocation::Args(argv))
}

/// One of the docker CLI's global options (`docker --help`, docker 28).
struct GlobalOption {
    names: &'static [&'static str],
    takes_value: bool,
    /// The environment variable that says the same, which asme and its docker calls read.
    env: Option<&'static str>,
    refused: bool,
}

const GLOBAL_OPTIONS: &[GlobalOption] = &[
    option(&["--config"], true, Some("DOCKER_CONFIG")),
    option(&["-c", "--context"], true, Some("DOCKER_CONTEXT")),
    option(&["-H", "--host"], true, Some("DOCKER_HOST")),
    option(&["-D", "--debug"], false, None),
    option(&["-l", "--log-level"], true, None),
    refused(&["--tls", "--tlsverify"], false),
    refused(&["--tlscacert", "--tlscert", "--tlskey"], true),
];

const fn option(
    names: &'static [&'static str],
    takes_value: bool,
    env: Option<&'static str>,
) -> GlobalOption {
    GlobalOption {
        names,
        takes_value,
        env,
        refused: false,
    }
}

const fn refused(names: &'static [&'static str], takes_value: bool) -> GlobalOption {
    GlobalOption {
        names,
        takes_value,
        env: None,
        refused: true,
    }
}

/// `--name=value`, `-Hvalue` and `-H=value` as (flag, value); anything else as (flag, None).
fn split_flag(text: &str) -> (&str, Option<&str>) {
    if text.starts_with("--") {
        return match text.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (text, None),
        };
    }
    if text.len() > 2 && text.is_char_boundary(2) {
        let (flag, value) = text.split_at(2);
        return (flag, Some(value.strip_prefix('=').unwrap_or(value)));
    }
    (text, None)
}

/// Runs this binary again with `args` and `env`; returns only if that fails.
pub fn reexec(args: &[OsString], env: &[(&str, OsString)]) -> anyhow::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => return anyhow::Error::new(err).context("finding asme's own binary"),
    };
    let mut command = std::process::Command::new(&exe);
    command.arg0(&args[0]).args(&args[1..]);
    for (name, value) in env {
        if value.is_empty() {
            command.env_remove(name);
        } else {
            command.env(name, value);
        }
    }
    let err = command.exec();
    anyhow::Error::new(err).context(format!("running {} again", exe.display()))
}

/// The plugin's answer to `docker-cli-plugin-metadata` (docker/cli's `cli-plugins/metadata`).
pub fn metadata() -> String {
    serde_json::json!({
        "SchemaVersion": "0.1.0",
        "Vendor": "asme",
        "Version": crate::cli::VERSION,
        "ShortDescription": "Run containers as me: what they write into your folders stays yours",
    })
    .to_string()
}

/// The user's plugin folder: `$DOCKER_CONFIG/cli-plugins`, by default
/// `~/.docker/cli-plugins` (docker/cli's `config.Dir()`).
pub fn user_dir() -> Result<PathBuf> {
    let config = std::env::var_os("DOCKER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| Path::new(&home).join(".docker"))
        })
        .context("neither DOCKER_CONFIG nor HOME is set: where is your docker configuration?")?;
    Ok(config.join("cli-plugins"))
}

/// Links `docker-asme` in `dir` to `exe` (replacing an older one); returns the link.
///
/// A link, not a copy: an asme upgraded in place is `docker asme` at once.
///
/// # Errors
/// When `dir` cannot be made or written; nothing is changed then.
pub fn install(dir: &Path, exe: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join(FILE_NAME);
    if link.is_dir() && !link.is_symlink() {
        bail!("{} is a folder; remove it first", link.display());
    }
    // A new link beside, renamed over the old: docker never sees a missing plugin.
    let fresh = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(exe, &fresh)
        .with_context(|| format!("linking {} to {}", fresh.display(), exe.display()))?;
    std::fs::rename(&fresh, &link).map_err(|err| {
        let _ = std::fs::remove_file(&fresh);
        anyhow::Error::new(err).context(format!("replacing {}", link.display()))
    })?;
    Ok(link)
}

/// Removes `docker-asme` from `dir`; returns it, or None if there was none.
///
/// # Errors
/// When it is there and cannot be removed.
pub fn uninstall(dir: &Path) -> Result<Option<PathBuf>> {
    let link = dir.join(FILE_NAME);
    match std::fs::remove_file(&link) {
        Ok(()) => Ok(Some(link)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(anyhow::Error::new(err).context(format!("removing {}", link.display()))),
    }
}

/// Whether the package's system-wide `docker-asme` is there (it stays after `asme uninstall`).
pub fn system_link() -> Option<PathBuf> {
    let link = Path::new(SYSTEM_DIR).join(FILE_NAME);
    link.symlink_metadata().is_ok().then_some(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn env(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, OsString)> {
        pairs.iter().map(|(n, v)| (*n, OsString::from(v))).collect()
    }

    #[test]
    fn commands_lines_as_asme_or_plugin() {
        let cases: &[(&[&str], Invocation)] = &[
            (
                &["asme", "run", "img"],
                Invocation::Args(os(&["asme", "run", "img"])),
            ),
            (
                &["/usr/bin/asme", "docker-cli-plugin-metadata"],
                Invocation::Metadata,
            ),
            (
                &[
                    "/home/u/.docker/cli-plugins/docker-asme",
                    "docker-cli-plugin-metadata",
                ],
                Invocation::Metadata,
            ),
            (
                &["/x/docker-asme", "asme", "run", "--rm", "img", "asme"],
                Invocation::Args(os(&["docker asme", "run", "--rm", "img", "asme"])),
            ),
            (
                &["/x/docker-asme", "asme"],
                Invocation::Args(os(&["docker asme"])),
            ),
            // `docker-asme` typed by hand is asme.
            (
                &["docker-asme", "fix", "."],
                Invocation::Args(os(&["docker-asme", "fix", "."])),
            ),
            (
                &["docker-asme", "--owner", "1:1", "fix", "."],
                Invocation::Args(os(&["docker-asme", "--owner", "1:1", "fix", "."])),
            ),
            // asme's own `asme asme` is not a plugin call.
            (&["asme", "asme"], Invocation::Args(os(&["asme", "asme"]))),
            (
                &[
                    "docker-asme",
                    "-D",
                    "--log-level=warn",
                    "-l",
                    "error",
                    "asme",
                    "-v",
                ],
                Invocation::Args(os(&["docker asme", "-v"])),
            ),
            (
                &[
                    "docker-asme",
                    "-H",
                    "unix:///a.sock",
                    "--context=ctx",
                    "--config",
                    "/cfg",
                    "asme",
                    "run",
                ],
                Invocation::Reexec {
                    args: os(&["docker asme", "run"]),
                    env: env(&[
                        ("DOCKER_HOST", "unix:///a.sock"),
                        ("DOCKER_CONTEXT", "ctx"),
                        ("DOCKER_CONFIG", "/cfg"),
                    ]),
                },
            ),
            (
                &["docker-asme", "-Hunix:///b.sock", "-c=x", "asme", "fix"],
                Invocation::Reexec {
                    args: os(&["docker asme", "fix"]),
                    env: env(&[("DOCKER_HOST", "unix:///b.sock"), ("DOCKER_CONTEXT", "x")]),
                },
            ),
            (
                &["docker-asme", "--context", "x", "asme", "fix"],
                Invocation::Reexec {
                    args: os(&["docker asme", "fix"]),
                    env: env(&[("DOCKER_CONTEXT", "x"), ("DOCKER_HOST", "")]),
                },
            ),
        ];
        for (argv, want) in cases {
            assert_eq!(&invocation(os(argv)).unwrap(), want, "{argv:?}");
        }
    }

    #[test]
    fn tls_and_missing_values_are_refused() {
        for argv in [
            &["docker-asme", "--tlsverify", "asme", "run"][..],
            &["docker-asme", "--tlscacert", "/ca.pem", "asme", "run"],
            &["docker-asme", "-H"],
        ] {
            let err = invocation(os(argv)).unwrap_err().to_string();
            assert!(err.starts_with("docker's option"), "{argv:?}: {err}");
        }
    }

    #[test]
    fn metadata_is_docker_plugin_json() {
        let value: serde_json::Value = serde_json::from_str(&metadata()).unwrap();
        assert_eq!(value["SchemaVersion"], "0.1.0");
        assert_eq!(value["Version"], crate::cli::VERSION);
        assert!(value["ShortDescription"].as_str().unwrap().len() < 80);
    }

    #[test]
    fn install_links_and_replaces_uninstall_removes() {
        let dir = std::env::temp_dir().join(format!("asme-cli-plugin-{}", std::process::id()));
        let plugins = dir.join("cli-plugins");
        let link = install(&plugins, Path::new("/bin/true")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/bin/true"));
        install(&plugins, Path::new("/bin/false")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/bin/false"));
        assert_eq!(std::fs::read_dir(&plugins).unwrap().count(), 1);
        assert_eq!(uninstall(&plugins).unwrap(), Some(link));
        assert_eq!(uninstall(&plugins).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

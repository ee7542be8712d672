//! Shell completions and man pages, both made from the one clap definition (`cli`).
//!
//! `asme completions SHELL` prints a completion script (clap_complete); `asme manpages DIR`
//! writes `asme.1` and one page per subcommand (clap_mangen), with sections clap knows nothing
//! of: the strategies, the environment and the exit statuses. The package script runs the
//! binary it packs, so pages and completions always describe that very build.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, ValueEnum as _};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::cli::{Cli, Strategy};

/// The environment variables asme reads, and what for (asme.1's ENVIRONMENT).
const ENVIRONMENT: &[(&str, &str)] = &[
    ("ASME_STRATEGY", "Stands for --strategy."),
    ("ASME_OWNER", "Stands for --owner."),
    ("ASME_ENGINE", "Stands for --engine."),
    (
        "DOCKER_HOST, DOCKER_CONTEXT, DOCKER_CONFIG",
        "Which Docker engine asme drives, as for docker itself; it must be on this machine \
         (a unix socket). Under `docker asme`, docker's -H, --context and --config become these.",
    ),
    (
        "CONTAINER_HOST",
        "Podman's endpoint. Set without DOCKER_HOST, it makes Podman the default engine.",
    ),
    (
        "SUDO_UID, SUDO_GID",
        "The default owner when asme runs under sudo (trusted only when asme really is root).",
    ),
    (
        "XDG_CACHE_HOME",
        "asme's cache (image facts, account files) is $XDG_CACHE_HOME/asme, else \
         ~/.cache/asme; root's is /var/cache/asme.",
    ),
    (
        "XDG_RUNTIME_DIR",
        "asme proxy listens on $XDG_RUNTIME_DIR/asme/docker.sock unless told otherwise.",
    ),
    (
        "ASME_NO_AGENT",
        "Set to 1, asme fix walks in a throwaway container rather than in asme's agent.",
    ),
];

/// `asme run`'s exit statuses: `docker run`'s.
const RUN_EXIT_STATUS: &[(&str, &str)] = &[
    (
        "N",
        "The command's own status; 128+N when signal N killed it.",
    ),
    (
        "125",
        "The run itself failed: docker's errors and asme's own (an unknown flag, a bad \
         --strategy, an unreachable engine).",
    ),
    ("126", "The command cannot be executed."),
    ("127", "The command is not found."),
];

/// The other commands' exit statuses.
const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "Failure, or only part of the work was done (asme fix, asme doctor).",
    ),
    ("2", "A command line that cannot be parsed."),
];

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible(&Cli::command()), "asme", &mut script);
    script
}

/// `cmd` without its hidden subcommands and options, which clap_complete 4.6 would offer
/// (`asme init` is for inside containers, not for a user's shell).
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut fresh = clap::Command::new(cmd.get_name().to_owned())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(visible),
        )
        .disable_help_flag(cmd.is_disable_help_flag_set());
    if let Some(about) = cmd.get_about() {
        fresh = fresh.about(about.clone());
    }
    if let Some(version) = cmd.get_version() {
        fresh = fresh.version(version.to_owned());
    }
    fresh
}

/// Writes asme.1 and a page per visible subcommand (asme-run.1, asme-plugin-install.1...) into
/// `dir`; returns their paths.
///
/// # Errors
/// When a page cannot be written.
pub fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build(); // names subcommands' pages (display name asme-run) and their usage
    let mut pages = Vec::new();
    write_tree(&root, dir, &mut pages)?;
    Ok(pages)
}

fn write_tree(cmd: &clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> Result<()> {
    let man = Man::new(cmd.clone())
        .source(format!("asme {}", crate::cli::VERSION))
        .manual("asme");
    let path = dir.join(man.get_filename());
    let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    render(cmd, &man, &mut file).with_context(|| format!("writing {}", path.display()))?;
    pages.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_tree(sub, dir, pages)?;
    }
    Ok(())
}

/// clap_mangen's sections, then asme's own.
fn render(cmd: &clap::Command, man: &Man, out: &mut dyn Write) -> io::Result<()> {
    let top = cmd.get_name() == "asme";
    let run = cmd.get_name() == "run";
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    let mut roff = Roff::new();
    if top || run {
        roff.control("SH", ["STRATEGIES"]);
        roff.text([roman(
            "--strategy, or ASME_STRATEGY, says how bind-mount writes are made the owner's:",
        )]);
        for strategy in Strategy::value_variants() {
            let value = strategy
                .to_possible_value()
                .expect("no strategy is skipped");
            let help = value
                .get_help()
                .map(ToString::to_string)
                .unwrap_or_default();
            item(&mut roff, value.get_name(), &help);
        }
    }
    if top {
        roff.control("SH", ["ENVIRONMENT"]);
        for (name, meaning) in ENVIRONMENT {
            item(&mut roff, name, meaning);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    if top {
        roff.text([roman("asme run exits as docker run does:")]);
        RUN_EXIT_STATUS
            .iter()
            .for_each(|(c, m)| item(&mut roff, c, m));
        roff.control("PP", []);
        roff.text([roman("The other commands:")]);
        EXIT_STATUS.iter().for_each(|(c, m)| item(&mut roff, c, m));
    } else if run {
        RUN_EXIT_STATUS
            .iter()
            .for_each(|(c, m)| item(&mut roff, c, m));
    } else {
        EXIT_STATUS.iter().for_each(|(c, m)| item(&mut roff, c, m));
    }
    roff.control("SH", ["SEE ALSO"]);
    let see_also = if top {
        "docker(1), docker-run(1); README.md in /usr/share/doc/asme."
    } else {
        "asme(1)"
    };
    roff.text([roman(see_also)]);
    roff.to_writer(out)?;
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// A tagged paragraph: `name` in bold, then its text.
fn item(roff: &mut Roff, name: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(name)]);
    roff.text([roman(text)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_commands_and_options() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completions(shell)).unwrap();
            for word in ["doctor", "strategy", "cli-plugin"] {
                assert!(text.contains(word), "{shell}: no {word}");
            }
            assert!(
                !text.contains("manpages"),
                "{shell}: hidden command completed"
            );
        }
    }

    #[test]
    fn pages_cover_every_visible_command() {
        let dir = std::env::temp_dir().join(format!("asme-manual-{}", std::process::id()));
        let pages = write_pages(&dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for name in [
            "asme.1",
            "asme-run.1",
            "asme-fix.1",
            "asme-plugin-install.1",
        ] {
            assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("init") || n.contains("manpages"))
        );
        let top = std::fs::read_to_string(dir.join("asme.1")).unwrap();
        for section in [
            "STRATEGIES",
            "ENVIRONMENT",
            "EXIT STATUS",
            "ASME_STRATEGY",
            "idmap",
        ] {
            assert!(top.contains(section), "asme.1 has no {section}");
        }
        let run = std::fs::read_to_string(dir.join("asme-run.1")).unwrap();
        assert!(
            run.contains("125"),
            "asme-run.1 has no docker exit statuses"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The Debian package: built by packaging/deb.sh from the binary under test, installed with
//! dpkg in a clean Debian container (asme-test/debian-doc, built locally, no network), used
//! there (asme --version, man -w, completions in bash, zsh and fish, docker-asme's metadata),
//! then removed and purged: the container's files are then exactly what they were before.

mod testenv;

use std::path::Path;
use std::process::Command;

use testenv::{Run, TestDir, docker, image, user1000};

/// Run in the container as root, with the package at /pkg/asme.deb. Prints "ok: ..." per
/// check; any failure exits non-zero with what differed.
const SCRIPT: &str = r#"
set -eu
# Every file, link and folder of the container's own filesystem, but for the package's
# folder, the kernel's and the bookkeeping that installing and removing anything updates:
# dpkg's and apt's state and logs, man-db's index (its trigger rebuilds it).
snapshot() {
    find / -xdev \( -path /pkg -o -path /proc -o -path /sys -o -path /dev -o -path /tmp \
        -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache/apt \
        -o -path /var/cache/man -o -path /var/cache/debconf -o -path /var/log \) -prune \
        -o -print | sort
}
snapshot >/tmp/before

dpkg -i /pkg/asme.deb >/tmp/dpkg.out 2>&1 || { cat /tmp/dpkg.out; exit 1; }
echo "ok: installed"

version=$(asme --version)
case "$version" in "asme "*" (build "*")") echo "ok: $version" ;; *) echo "bad version: $version"; exit 1 ;; esac

man -w asme >/tmp/man
grep -qx /usr/share/man/man1/asme.1.gz /tmp/man || { cat /tmp/man; exit 1; }
man -w asme-run >/dev/null
MANWIDTH=80 man asme 2>/dev/null | grep -q 'EXIT STATUS'
MANWIDTH=80 man asme-fix 2>/dev/null | grep -q 'dry-run'
echo "ok: man -w asme: $(cat /tmp/man)"
grep -qx 'License: MIT' /usr/share/doc/asme/copyright || { cat /usr/share/doc/asme/copyright; exit 1; }

# bash: bash-completion loads the package's file on first use, as in an interactive shell.
words=$(bash -c '
    . /usr/share/bash-completion/bash_completion
    _completion_loader asme
    COMP_WORDS=(asme --str); COMP_CWORD=1; COMP_LINE="asme --str"; COMP_POINT=${#COMP_LINE}
    _asme asme --str asme
    echo "${COMPREPLY[*]}"
    COMP_WORDS=(asme --strategy ""); COMP_CWORD=2; COMP_LINE="asme --strategy "
    _asme asme "" --strategy
    echo "${COMPREPLY[*]}"')
[ "$words" = "--strategy
auto idmap fuse user fix" ] || { echo "bash completes: $words"; exit 1; }
echo "ok: bash completes --strategy and its values"
# fish keeps its own state in HOME: a throwaway one, so the snapshots compare the package's.
export HOME=/tmp/home XDG_CONFIG_HOME=/tmp/home/.config XDG_DATA_HOME=/tmp/home/.local/share
mkdir -p "$HOME"
fish -c 'complete -C "asme --str"' | grep -q '^--strategy' || { echo "fish: no --strategy"; exit 1; }
fish -c 'complete -C "asme fi"' | grep -q '^fix' || { echo "fish: no fix"; exit 1; }
echo "ok: fish completes"
zsh -c 'autoload -U compinit && compinit -u -d /tmp/zcompdump && [ "${_comps[asme]}" = _asme ]' ||
    { echo "zsh: no completion for asme"; exit 1; }
echo "ok: zsh finds _asme"

/usr/libexec/docker/cli-plugins/docker-asme docker-cli-plugin-metadata | grep -q '"SchemaVersion":"0.1.0"'
echo "ok: docker-asme answers docker-cli-plugin-metadata"

apt-get remove -y asme >/tmp/apt.out 2>&1 || { cat /tmp/apt.out; exit 1; }
grep -q 'asme plugin uninstall' /tmp/apt.out || { echo "remove says nothing of users' leftovers"; cat /tmp/apt.out; exit 1; }
snapshot >/tmp/after-remove
diff /tmp/before /tmp/after-remove || { echo "apt-get remove left the above"; exit 1; }
echo "ok: apt-get remove leaves nothing"
dpkg -P asme >/dev/null
dpkg -s asme >/dev/null 2>&1 && { echo "dpkg still knows asme"; exit 1; }
ls /var/lib/dpkg/info/asme.* 2>/dev/null && { echo "dpkg -P left the above"; exit 1; }
snapshot >/tmp/after-purge
diff /tmp/before /tmp/after-purge
echo "ok: dpkg -P leaves nothing"
"#;

#[test]
fn package_installs_works_and_leaves_nothing() {
    let out = TestDir::new(user1000(), "package");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = Run::of(
        Command::new("bash")
            .arg(root.join("packaging/deb.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_asme"), "--out"])
            .arg(&out.path),
    );
    let deb = build.ok();
    let deb = Path::new(deb.trim());
    std::fs::rename(deb, out.join("asme.deb")).unwrap();

    let mount = format!("{}:/pkg:ro", out.path.display());
    let run = Run::of(docker(&[
        "run",
        "--rm",
        "--network=none",
        "-v",
        &mount,
        &image("debian-doc"),
        "bash",
        "-c",
        SCRIPT,
    ]));
    let stdout = run.ok();
    for check in [
        "ok: installed",
        "ok: man -w asme",
        "ok: bash completes",
        "ok: fish completes",
        "ok: zsh finds _asme",
        "ok: docker-asme answers",
        "ok: apt-get remove leaves nothing",
        "ok: dpkg -P leaves nothing",
    ] {
        assert!(stdout.contains(check), "no '{check}' in:\n{stdout}");
    }
}

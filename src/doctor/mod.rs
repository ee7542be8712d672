//! `asme doctor`: what this host offers asme, tested rather than guessed.
//!
//! Owns the host probes (engine, kernel, filesystem, FUSE, security modules) and the report
//! (a table, or JSON with `--json`). The live self-test (`selftest`) runs this very binary as
//! `asme run` for each strategy and for `auto`, so the verdict is what a user's run does.

mod selftest;
mod table;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;
use serde_json::Value;

use crate::cache::Cache;
use crate::engine::{Engine, Kind, Program, kind::security_options};
use crate::owner::{self, Owner, OwnerSpec};

/// Everything doctor found; serialised as is for `--json`, so the keys are stable.
#[derive(Debug, Serialize)]
pub struct Report {
    pub engine: EngineReport,
    pub kernel: String,
    pub path: PathReport,
    pub fuse: Fuse,
    pub security: Security,
    pub strategies: Strategies,
    /// The volume driver (`asme plugin status`); null when the engine could not be asked.
    pub plugin: Option<String>,
    /// The strategy `asme run` (auto) used in the self-test: "idmap", "fuse", "user", "keep"
    /// (the owner is root: the container keeps its own user), or "none".
    pub auto: String,
}

/// The engine row; every field is null where the engine could not be asked.
#[derive(Debug, Default, Serialize)]
pub struct EngineReport {
    /// The CLI's version (`docker version`).
    pub client: Option<String>,
    /// The daemon's version.
    pub server: Option<String>,
    /// Rootful, rootless, Podman or Docker Desktop.
    pub kind: Option<Kind>,
    /// Why the engine could not be used, if it could not.
    pub error: Option<String>,
}

/// The path row: the folder doctor was asked about (PATH, or the working folder).
#[derive(Debug, Serialize)]
pub struct PathReport {
    pub path: PathBuf,
    /// Its filesystem's name (`ext4`, `fuse`...), or its magic number.
    pub fs_type: String,
    /// Whether an idmapped mount of a folder there worked; null when it was not tried.
    pub idmap: Option<bool>,
    /// Where the strategies were tried: a folder inside `path`, or in asme's cache where
    /// `path` is not writable by the user.
    pub tested_in: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Fuse {
    pub device: bool,
    pub openable: bool,
    pub passthrough: bool,
    /// The fuse module takes requests over io_uring (`enable_uring`, Linux 6.14+), which
    /// `asme mount` then uses.
    pub io_uring: bool,
}

#[derive(Debug, Serialize)]
pub struct Security {
    pub apparmor: bool,
    /// "enforcing", "permissive" or "disabled".
    pub selinux: &'static str,
    /// Null when the engine could not be asked.
    pub seccomp: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Strategies {
    pub idmap: Outcome,
    /// `auto`'s choice where a source refuses idmapped mounts.
    pub fuse: Outcome,
    pub user: Outcome,
    /// Never chosen by `auto`; listed so its state is known.
    pub fix: Outcome,
}

/// The result of one live self-test.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
}

impl Strategies {
    /// Each outcome under its row name in the table.
    fn rows(&self) -> [(&'static str, &Outcome); 4] {
        [
            ("strategy idmap", &self.idmap),
            ("strategy fuse", &self.fuse),
            ("strategy user", &self.user),
            ("strategy fix", &self.fix),
        ]
    }

    fn failed(detail: &str) -> Strategies {
        Strategies {
            idmap: Outcome::failed(detail),
            fuse: Outcome::failed(detail),
            user: Outcome::failed(detail),
            fix: Outcome::failed(detail),
        }
    }
}

impl Outcome {
    fn failed(detail: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// `asme doctor [PATH] [--json]`: prints the report; true when some strategy works here.
pub fn main(
    program: Program,
    owner: Option<OwnerSpec>,
    path: Option<&Path>,
    json: bool,
) -> Result<bool> {
    let report = examine(program, owner::invoking(owner), path)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data")
        );
    } else {
        print!("{}", table::table(&report));
    }
    Ok(report.auto != "none")
}

/// `asme doctor-write PATH` (inside the self-test's container): creates the file and prints
/// the ids it was created with.
pub fn write_probe(path: &Path) -> Result<()> {
    std::fs::write(path, "asme doctor\n").with_context(|| format!("writing {}", path.display()))?;
    let (uid, gid) = crate::sys::real_ids();
    println!("{uid}:{gid}");
    Ok(())
}

fn examine(program: Program, owner: Owner, path: Option<&Path>) -> Result<Report> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => std::env::current_dir().context("reading the working folder")?,
    };
    let path = path
        .canonicalize()
        .with_context(|| format!("checking {}", path.display()))?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let fuse = Fuse {
        device: Path::new("/dev/fuse").exists(),
        // Opened and closed at once: no mount is made.
        openable: rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .is_ok(),
        // FUSE_PASSTHROUGH came with Linux 6.9.
        passthrough: kernel_at_least(&kernel, (6, 9)),
        io_uring: crate::sys::uring::enabled(),
    };
    let (engine, docker, info) = match probe_engine(program) {
        Ok((docker, engine, info)) => (engine, Some(docker), info),
        Err(e) => {
            let engine = EngineReport {
                error: Some(format!("{e:#}")),
                ..EngineReport::default()
            };
            (engine, None, Value::Null)
        }
    };
    let kind = engine.kind;
    let security = Security {
        apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y"),
        selinux: match std::fs::read_to_string("/sys/fs/selinux/enforce") {
            Ok(s) if s.trim() == "1" => "enforcing",
            Ok(_) => "permissive",
            Err(_) => "disabled",
        },
        seccomp: docker
            .as_ref()
            .map(|_| security_options(&info).any(|o| o.contains("name=seccomp"))),
    };
    let plugin = docker
        .as_ref()
        .map(|engine| match crate::plugin::install::status(engine) {
            _ if engine.program == Program::Podman => {
                "not available (Podman has no managed plugins)".to_string()
            }
            _ if kind == Some(Kind::Rootless) => {
                format!("not available ({})", crate::plugin::install::ROOTLESS)
            }
            Ok(status) => status.describe().to_string(),
            Err(e) => format!("unknown ({e:#})"),
        });
    let mut tested_in = None;
    // Rootless engines are tried for real: their strategies say what they can do there.
    let rootless = matches!(kind, Some(Kind::Rootless | Kind::PodmanRootless));
    let remapping = engine.kind.filter(|k| k.remaps_ids() && !rootless);
    let (strategies, auto) = match docker {
        None => (Strategies::failed("no engine"), "none".to_string()),
        // Its containers would leave files of subordinate ids in the scratch folder, and
        // asme run keeps out there anyway (`run::strategy`).
        Some(_) if remapping.is_some() => (
            Strategies::failed("not tried: this engine stores container ids as other ids"),
            // A userns-remap daemon is rootful: idmap names the ids it stores.
            if remapping == Some(Kind::UsernsRemap) {
                "idmap".to_string()
            } else {
                "plain".to_string()
            },
        ),
        Some(docker) => match scratch(&path, owner) {
            Err(e) => (Strategies::failed(&format!("{e:#}")), "none".to_string()),
            Ok(scratch) => {
                tested_in = Some(scratch.0.clone());
                let (strategies, auto) = selftest::run_all(&docker, &scratch.0, owner)
                    .unwrap_or_else(|e| {
                        (Strategies::failed(&format!("{e:#}")), "none".to_string())
                    });
                // A root container ran as plain docker would; other users get fuse, if it works.
                let auto = match (rootless, auto.as_str(), strategies.fuse.ok) {
                    (true, "keep", true) => "rootless-fuse".to_string(),
                    (true, "keep", false) => "rootless-plain".to_string(),
                    _ => auto,
                };
                (strategies, auto)
            }
        },
    };
    let tested_in = tested_in.map(|t| t.parent().map_or(t.clone(), Path::to_path_buf));
    let in_path = tested_in.as_ref() == Some(&path);
    let fs_type = fs_type(&path);
    Ok(Report {
        engine,
        kernel,
        path: PathReport {
            // A rootless engine refuses idmap whatever the filesystem.
            idmap: (in_path && !rootless).then_some(strategies.idmap.ok),
            path,
            fs_type,
            tested_in,
        },
        fuse,
        security,
        strategies,
        plugin,
        auto,
    })
}

/// A fresh folder for the self-test: inside `path`, so on its filesystem, or, where the user
/// may not write there (doctor run from `/`, say), in asme's cache.
fn scratch(path: &Path, owner: Owner) -> Result<selftest::Scratch> {
    match selftest::Scratch::new(path, owner) {
        Ok(scratch) => Ok(scratch),
        Err(e) if is_not_writable(&e) => {
            let cache = Cache::open()?;
            selftest::Scratch::new(&cache.doctor_dir()?, owner)
        }
        Err(e) => Err(e),
    }
}

fn is_not_writable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EROFS)
        )
    })
}

fn fs_type(path: &Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(st) => fs_name(st.f_type as u32),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Versions and kind of the engine, and its `docker info`.
fn probe_engine(program: Program) -> Result<(Engine, EngineReport, Value)> {
    let docker = Engine::detect(program)?;
    let version: Value =
        serde_json::from_str(&docker.output(["version", "--format", "{{json .}}"])?)
            .context("reading docker version")?;
    let info: Value = serde_json::from_str(&docker.output(["info", "--format", "{{json .}}"])?)
        .context("reading docker info")?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let engine = EngineReport {
        client: text(&version["Client"]["Version"]),
        server: text(&version["Server"]["Version"]),
        // Docker's from the answers read above; Podman says whether it runs rootless only in
        // its own `podman info`, not in these Docker-compatible answers.
        kind: Some(match program {
            Program::Podman => docker.kind().unwrap_or_else(|| Kind::of(&version, &info)),
            Program::Docker => Kind::of(&version, &info),
        }),
        error: None,
    };
    Ok((docker, engine, info))
}

/// Name of a filesystem by its statfs(2) magic number (linux/magic.h).
fn fs_name(magic: u32) -> String {
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x794C_7630 => "overlay",
        0x0102_1997 => "9p",
        0x2FC1_2FC1 => "zfs",
        other => return format!("{other:#x}"),
    };
    name.to_string()
}

/// Whether a kernel release ("6.18.44-foo") is at least `major.minor`.
fn kernel_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= wanted,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filesystem_names() {
        assert_eq!(fs_name(0xEF53), "ext4");
        assert_eq!(fs_name(0x9123_683E), "btrfs");
        assert_eq!(fs_name(0x1234), "0x1234");
    }

    #[test]
    fn kernel_versions() {
        for (release, at_least) in [
            ("6.9.0", true),
            ("6.18.44-fc-v657", true),
            ("7.0", true),
            ("6.8.12-generic", false),
            ("5.15.0-91-generic", false),
            ("", false),
        ] {
            assert_eq!(kernel_at_least(release, (6, 9)), at_least, "{release}");
        }
    }

    #[test]
    fn engine_kinds() {
        use crate::engine::Kind;
        let docker =
            json!({"Server": {"Platform": {"Name": ""}, "Components": [{"Name": "Engine"}]}});
        let podman = json!({"Server": {"Components": [{"Name": "Podman Engine"}]}});
        let plain = json!({"OperatingSystem": "Debian", "SecurityOptions": ["name=seccomp,profile=default"]});
        let rootless = json!({"SecurityOptions": ["name=seccomp", "name=rootless"]});
        let desktop = json!({"OperatingSystem": "Docker Desktop"});
        // As a userns-remap dockerd 20.10 answers (issue 14's trial).
        let remap = json!({"SecurityOptions": ["name=seccomp,profile=default", "name=userns"]});
        assert_eq!(Kind::of(&docker, &plain), Kind::Rootful);
        assert_eq!(Kind::of(&docker, &rootless), Kind::Rootless);
        assert_eq!(Kind::of(&docker, &remap), Kind::UsernsRemap);
        for (kind, remaps) in [
            (Kind::Rootful, false),
            (Kind::Rootless, true),
            (Kind::UsernsRemap, true),
            (Kind::Podman, false),
            (Kind::PodmanRootless, true),
            (Kind::DockerDesktop, false),
        ] {
            assert_eq!(kind.remaps_ids(), remaps, "{kind:?}");
        }
        assert_eq!(Kind::of(&docker, &desktop), Kind::DockerDesktop);
        assert_eq!(Kind::of(&podman, &rootless), Kind::Podman);
        assert_eq!(Kind::of(&Value::Null, &Value::Null), Kind::Rootful);
    }
}

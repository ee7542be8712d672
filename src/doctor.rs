//! `asme doctor`: what this host offers asme, tested rather than guessed.
//!
//! Owns the host probes (engine, kernel, filesystem, FUSE, security modules), the live
//! self-test of each strategy and the report (a table, or JSON with `--json`). The strategies
//! themselves stay in `run`: the self-test runs this very binary as `asme run` against a
//! throwaway image, so it exercises exactly what a user's run would. Everything it makes (the
//! image, a temp folder inside PATH) is removed before it returns.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, Result};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;
use serde_json::Value;

use crate::cli::Cli;
use crate::owner::Owner;
use crate::run::cache::Cache;
use crate::run::engine::Docker;

/// Where the self-test's folder appears inside its container.
const MOUNT: &str = "/w";

/// The line `asme run --strategy auto` prints when it falls back from idmap.
const FALLBACK_NOTICE: &str = "idmap strategy unavailable";

/// Everything doctor found; serialised as is for `--json`, so the keys are stable.
#[derive(Debug, Serialize)]
pub struct Report {
    pub engine: Engine,
    pub kernel: String,
    pub path: PathReport,
    pub fuse: Fuse,
    pub security: Security,
    pub strategies: Strategies,
    /// The strategy `--strategy auto` will use: "idmap", "user", "fix", "none", or "keep"
    /// (the owner is root: the container keeps its own user, nothing is mapped).
    pub auto: &'static str,
}

#[derive(Debug, Default, Serialize)]
pub struct Engine {
    pub client: Option<String>,
    pub server: Option<String>,
    pub kind: Option<EngineKind>,
    /// Why the engine could not be used, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    Rootful,
    Rootless,
    Podman,
    DockerDesktop,
}

#[derive(Debug, Serialize)]
pub struct PathReport {
    pub path: PathBuf,
    pub fs_type: String,
    /// Whether an idmapped mount of a folder there worked; null when it was not tried.
    pub idmap: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Fuse {
    pub device: bool,
    pub openable: bool,
    pub passthrough: bool,
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
    /// `auto`'s choice where PATH's filesystem refuses idmapped mounts.
    pub fuse: Outcome,
    pub user: Outcome,
    /// Never chosen by `auto` while idmap or user works; listed so its state is known.
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

/// `asme doctor [PATH] [--json]`: exits 0 when some strategy works here, 1 otherwise.
pub fn main(cli: &Cli, path: Option<&Path>, json: bool) -> ExitCode {
    let report = match examine(cli, path) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("asme: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("plain data")
        );
    } else {
        print!("{}", table(&report));
    }
    if report.auto == "none" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `asme doctor-write PATH` (inside the self-test's container): creates the file and prints
/// the ids it was created with.
pub fn write_probe(path: &Path) -> Result<()> {
    std::fs::write(path, "asme doctor\n").with_context(|| format!("writing {}", path.display()))?;
    let (uid, gid) = crate::sys::real_ids();
    println!("{uid}:{gid}");
    Ok(())
}

fn examine(cli: &Cli, path: Option<&Path>) -> Result<Report> {
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
    let fs_type = match rustix::fs::statfs(&path) {
        Ok(st) => fs_name(st.f_type as u32),
        Err(e) => format!("unknown ({e})"),
    };
    let fuse = Fuse {
        device: Path::new("/dev/fuse").exists(),
        // Opened and closed at once: no mount is made.
        openable: rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .is_ok(),
        // FUSE_PASSTHROUGH came with Linux 6.9.
        passthrough: kernel_at_least(&kernel, (6, 9)),
    };
    let (engine, docker, info) = match probe_engine() {
        Ok((docker, engine, info)) => (engine, Some(docker), info),
        Err(e) => {
            let engine = Engine {
                error: Some(format!("{e:#}")),
                ..Engine::default()
            };
            (engine, None, Value::Null)
        }
    };
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
    let owner = crate::run::invoking_owner(cli);
    let (strategies, tried) = match docker.as_ref().map(|d| self_tests(d, &path, owner)) {
        Some(Ok(strategies)) => (strategies, true),
        Some(Err(e)) => (Strategies::failed(&format!("{e:#}")), false),
        None => (Strategies::failed("no engine"), false),
    };
    // As `asme run` decides: an owner who is root keeps the container's own user.
    let auto = if owner.uid == 0 && strategies.user.ok {
        "keep"
    } else if strategies.idmap.ok {
        "idmap"
    } else if strategies.fuse.ok && strategies.idmap.detail.contains("refuse") {
        "fuse"
    } else if strategies.user.ok {
        "user"
    } else if strategies.fix.ok {
        "fix"
    } else {
        "none"
    };
    Ok(Report {
        engine,
        kernel,
        path: PathReport {
            path,
            fs_type,
            idmap: tried.then_some(strategies.idmap.ok),
        },
        fuse,
        security,
        strategies,
        auto,
    })
}

/// Versions and kind of the engine, and its `docker info`.
fn probe_engine() -> Result<(Docker, Engine, Value)> {
    let docker = Docker::detect()?;
    let version: Value =
        serde_json::from_str(&docker.output(["version", "--format", "{{json .}}"])?)
            .context("reading docker version")?;
    let info: Value = serde_json::from_str(&docker.output(["info", "--format", "{{json .}}"])?)
        .context("reading docker info")?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let engine = Engine {
        client: text(&version["Client"]["Version"]),
        server: text(&version["Server"]["Version"]),
        kind: Some(engine_kind(&version, &info)),
        error: None,
    };
    Ok((docker, engine, info))
}

fn engine_kind(version: &Value, info: &Value) -> EngineKind {
    let server = &version["Server"];
    let names = std::iter::once(&server["Platform"]["Name"]).chain(
        server["Components"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| &c["Name"]),
    );
    if names
        .filter_map(Value::as_str)
        .any(|n| n.contains("Podman"))
    {
        EngineKind::Podman
    } else if info["OperatingSystem"]
        .as_str()
        .is_some_and(|os| os.contains("Docker Desktop"))
    {
        EngineKind::DockerDesktop
    } else if security_options(info).any(|o| o.contains("name=rootless")) {
        EngineKind::Rootless
    } else {
        EngineKind::Rootful
    }
}

fn security_options(info: &Value) -> impl Iterator<Item = &str> {
    info["SecurityOptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Runs every strategy for real on a temp folder inside `path` (so on its filesystem); an
/// error means they could not be tried.
fn self_tests(docker: &Docker, path: &Path, owner: Owner) -> Result<Strategies> {
    let exe = std::env::current_exe().context("finding the asme binary")?;
    let scratch = Scratch::new(path, owner)?;
    let image = Throwaway::import(docker, &exe)?;
    Ok(Strategies {
        idmap: self_test(&exe, "idmap", &image.tag, &scratch.0, owner),
        fuse: self_test(&exe, "fuse", &image.tag, &scratch.0, owner),
        user: self_test(&exe, "user", &image.tag, &scratch.0, owner),
        fix: self_test(&exe, "fix", &image.tag, &scratch.0, owner),
    })
}

/// `asme --strategy S -v run` of `asme doctor-write` writing into `dir`, then a look at who
/// owns the file on the host.
fn self_test(exe: &Path, strategy: &str, image: &str, dir: &Path, owner: Owner) -> Outcome {
    let target = format!("{MOUNT}/{strategy}");
    let output = Command::new(exe)
        .args(["--strategy", strategy, "--owner", &owner.to_string(), "-v"])
        .args(["run", "--rm", "--network=none", "-v"])
        .arg(format!("{}:{MOUNT}", dir.display()))
        .args([image, "/asme", "doctor-write", &target])
        .stdin(Stdio::null())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => return Outcome::failed(format!("running {}: {e}", exe.display())),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Outcome::failed(match last {
            Some(line) => line.strip_prefix("asme: ").unwrap_or(line).to_string(),
            None => format!("asme run failed ({})", output.status),
        });
    }
    if !stderr.contains(&format!("asme: strategy {strategy}:")) || stderr.contains(FALLBACK_NOTICE)
    {
        return Outcome::failed(format!("asme run did not use the {strategy} strategy"));
    }
    let inside = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let stored = match std::fs::symlink_metadata(dir.join(strategy)) {
        Ok(meta) => Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        },
        Err(e) => return Outcome::failed(format!("the container's file is missing: {e}")),
    };
    if stored != owner {
        return Outcome::failed(format!(
            "a file written as {inside} in the container is stored as {stored}, not {owner}"
        ));
    }
    Outcome {
        ok: true,
        detail: format!("a file written as {inside} in the container is stored as {stored}"),
    }
}

/// A temp folder inside the checked path, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path, owner: Owner) -> Result<Scratch> {
        let dir = parent.join(format!(".asme-doctor-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating a temp folder in {}", parent.display()))?;
        let scratch = Scratch(dir);
        // Under sudo the folder is root's; the user strategy writes into it as the owner.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&scratch.0, Some(owner.uid), Some(owner.gid))
                .with_context(|| format!("handing {} to {owner}", scratch.0.display()))?;
        }
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("asme: warning: removing {}: {e}", self.0.display());
        }
    }
}

/// The self-test's image: asme's own binary alone at `/asme`, removed on drop.
struct Throwaway<'a> {
    docker: &'a Docker,
    tag: String,
}

impl<'a> Throwaway<'a> {
    fn import(docker: &'a Docker, exe: &Path) -> Result<Throwaway<'a>> {
        let tag = format!("asme-doctor:{}", std::process::id());
        docker
            .import_self(exe, &tag, &[])
            .context("importing the self-test image")?;
        Ok(Throwaway { docker, tag })
    }
}

impl Drop for Throwaway<'_> {
    fn drop(&mut self) {
        // The runs used --rm; a container left behind (a killed docker CLI) goes too.
        let ancestor = format!("ancestor={}", self.tag);
        if let Ok(ids) = self.docker.output(["ps", "-aq", "--filter", &ancestor]) {
            for id in ids.split_whitespace() {
                eprintln!("asme: warning: removing left-over container {id}");
                let _ = self.docker.output(["rm", "-f", id]);
            }
        }
        // The runs cached what they learnt about this one-off image; it will not come back.
        if let (Ok(Some(image)), Ok(cache)) = (self.docker.inspect_image(&self.tag), Cache::open())
        {
            cache.forget_image(&image.id);
        }
        if let Err(e) = self.docker.output(["image", "rm", &self.tag]) {
            eprintln!("asme: warning: removing image {}: {e:#}", self.tag);
        }
    }
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

/// The report as a table: one row per check, then the strategy `auto` will use.
fn table(report: &Report) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let pass = |b: bool| if b { "ok" } else { "FAIL" };
    let engine = &report.engine;
    let engine_row = match (&engine.error, engine.kind) {
        (Some(error), _) => ("FAIL", error.clone()),
        (None, kind) => (
            "ok",
            format!(
                "client {}, server {} ({})",
                engine.client.as_deref().unwrap_or("?"),
                engine.server.as_deref().unwrap_or("?"),
                kind.map_or("?", EngineKind::name)
            ),
        ),
    };
    let fuse = &report.fuse;
    let path = &report.path;
    let security = &report.security;
    let rows = [
        ("engine", engine_row.0, engine_row.1),
        ("kernel", "ok", report.kernel.clone()),
        (
            "path",
            path.idmap.map_or("-", pass),
            format!(
                "{} on {}; idmapped mounts: {}",
                path.path.display(),
                path.fs_type,
                path.idmap.map_or("not tried", yes_no)
            ),
        ),
        (
            "fuse",
            yes_no(fuse.openable),
            format!(
                "/dev/fuse: {}; you can open it: {}; passthrough (Linux 6.9+): {}",
                if fuse.device { "present" } else { "missing" },
                yes_no(fuse.openable),
                yes_no(fuse.passthrough)
            ),
        ),
        ("apparmor", yes_no(security.apparmor), String::new()),
        ("selinux", security.selinux, String::new()),
        (
            "seccomp",
            security.seccomp.map_or("-", yes_no),
            match security.seccomp {
                Some(true) => "containers get the engine's default profile".into(),
                _ => String::new(),
            },
        ),
    ];
    let strategies = report.strategies.rows();
    let rows = rows.into_iter().chain(
        strategies
            .into_iter()
            .map(|(name, o)| (name, pass(o.ok), o.detail.clone())),
    );
    let rows: Vec<_> = rows.collect();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let result_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, result, detail) in rows {
        let line = format!("{name:name_width$}  {result:result_width$}  {detail}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&match report.auto {
        "none" => "auto: no strategy works here, so asme run will fail\n".to_string(),
        "keep" => "auto: you are root, so asme run keeps the container's own user\n".to_string(),
        strategy => format!("auto: asme run will use the {strategy} strategy\n"),
    });
    out
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            EngineKind::Rootful => "rootful",
            EngineKind::Rootless => "rootless",
            EngineKind::Podman => "podman",
            EngineKind::DockerDesktop => "docker-desktop",
        }
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
        let docker =
            json!({"Server": {"Platform": {"Name": ""}, "Components": [{"Name": "Engine"}]}});
        let podman = json!({"Server": {"Components": [{"Name": "Podman Engine"}]}});
        let plain = json!({"OperatingSystem": "Debian", "SecurityOptions": ["name=seccomp,profile=default"]});
        let rootless = json!({"SecurityOptions": ["name=seccomp", "name=rootless"]});
        let desktop = json!({"OperatingSystem": "Docker Desktop"});
        assert_eq!(engine_kind(&docker, &plain), EngineKind::Rootful);
        assert_eq!(engine_kind(&docker, &rootless), EngineKind::Rootless);
        assert_eq!(engine_kind(&docker, &desktop), EngineKind::DockerDesktop);
        assert_eq!(engine_kind(&podman, &rootless), EngineKind::Podman);
        assert_eq!(engine_kind(&Value::Null, &Value::Null), EngineKind::Rootful);
    }
}

//! The live self-test: each strategy, and `auto`, run for real through this very binary as
//! `asme run`, writing a file into a bind mount of a fresh folder; then a look at who owns it
//! on the host. Everything it makes (the image, the folder) is removed before it returns.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use super::{Outcome, Strategies};
use crate::cache::Cache;
use crate::engine::Engine;
use crate::owner::Owner;
use crate::run::strategy::Name;

/// Where the self-test's folder appears inside its container.
const MOUNT: &str = "/w";

/// Runs every strategy, and auto, for real in `dir`; an error means they could not be tried.
pub fn run_all(engine: &Engine, dir: &Path, owner: Owner) -> Result<(Strategies, String)> {
    let exe = std::env::current_exe().context("finding the asme binary")?;
    let image = Throwaway::import(engine, &exe)?;
    let test = |strategy: &str| self_test(engine, &exe, strategy, &image.tag, dir, owner);
    let strategies = Strategies {
        idmap: test(Name::Idmap.as_str()),
        fuse: test(Name::Fuse.as_str()),
        user: test(Name::User.as_str()),
        fix: test(Name::Fix.as_str()),
    };
    // What auto does here is what auto did, not a guess from the rows above.
    let auto = test("auto");
    let chosen = if auto.ok {
        auto.detail
    } else {
        "none".to_string()
    };
    Ok((strategies, chosen))
}

/// `asme --strategy S -v run` of `asme doctor-write` writing into `dir`, then a look at who
/// owns the file on the host.
/// For `auto`, a passing outcome's detail is the name of the strategy it used.
fn self_test(
    engine: &Engine,
    exe: &Path,
    strategy: &str,
    image: &str,
    dir: &Path,
    owner: Owner,
) -> Outcome {
    let target = format!("{MOUNT}/{strategy}");
    let output = Command::new(exe)
        .args(["--engine", engine.program.command()])
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
    // `-v` names each strategy as it is tried ("asme: strategy NAME: ..."); the last one
    // served the run.
    let used = stderr.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("asme: strategy ")?;
        Some(rest.split(':').next()?.to_string())
    });
    let Some(used) = used else {
        return Outcome::failed("asme run did not say which strategy it used");
    };
    if strategy != "auto" && used != strategy {
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
        detail: if strategy == "auto" {
            used
        } else {
            format!("a file written as {inside} in the container is stored as {stored}")
        },
    }
}

/// A temp folder inside the checked path (or, where that is not writable, in the cache),
/// removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(parent: &Path, owner: Owner) -> Result<Scratch> {
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
    engine: &'a Engine,
    tag: String,
}

impl<'a> Throwaway<'a> {
    fn import(engine: &'a Engine, exe: &Path) -> Result<Throwaway<'a>> {
        let tag = format!("asme-doctor:{}", std::process::id());
        engine
            .import_self(exe, &tag, &[])
            .context("importing the self-test image")?;
        Ok(Throwaway { engine, tag })
    }
}

impl Drop for Throwaway<'_> {
    fn drop(&mut self) {
        // The runs used --rm; a container left behind (a killed docker CLI) goes too.
        let ancestor = format!("ancestor={}", self.tag);
        if let Ok(ids) = self.engine.output(["ps", "-aq", "--filter", &ancestor]) {
            for id in ids.split_whitespace() {
                eprintln!("asme: warning: removing left-over container {id}");
                let _ = self.engine.output(["rm", "-f", id]);
            }
        }
        // The runs cached what they learnt about this one-off image; it will not come back.
        if let (Ok(Some(image)), Ok(cache)) = (self.engine.inspect_image(&self.tag), Cache::open())
        {
            cache.forget_image(&image.id);
        }
        if let Err(e) = self.engine.output(["image", "rm", &self.tag]) {
            eprintln!("asme: warning: removing image {}: {e:#}", self.tag);
        }
    }
}

//! Images: what `docker run` takes from an image's configuration, making an image local as
//! `--pull` says, probing what an image holds, and asme's own image (its binary alone,
//! imported: nothing is pulled).

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::{Engine, INIT_PATH, SELF_IMAGE_LABEL, cli_error, init_mount};
use crate::init::probe::ImageFacts;

/// The parts of an image's configuration that `docker run` applies and asme must keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Content id (`sha256:...`): what the image facts cache is keyed by.
    pub id: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// USER from the image, empty for root.
    pub user: String,
    pub env: Vec<String>,
}

/// `docker run --pull` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

impl PullPolicy {
    pub fn parse(value: Option<&str>) -> Result<PullPolicy> {
        match value {
            None | Some("missing") => Ok(PullPolicy::Missing),
            Some("always") => Ok(PullPolicy::Always),
            Some("never") => Ok(PullPolicy::Never),
            Some(other) => bail!(
                "invalid pull option: '{other}': must be one of \"always\", \"missing\" or \"never\""
            ),
        }
    }
}

impl Engine {
    /// Inspects a local image; `Ok(None)` when the engine does not have it.
    pub fn inspect_image(&self, image: &str) -> Result<Option<ImageConfig>> {
        // The API answers in about a millisecond; anything unexpected goes through the CLI,
        // which also words the errors.
        if let Some((status, body)) = self.api_get(&format!("/images/{image}/json")) {
            match status {
                200 => {
                    return parse_image_config(&body)
                        .with_context(|| format!("reading the configuration of image {image}"))
                        .map(Some);
                }
                404 => return Ok(None),
                _ => {}
            }
        }
        let output = self.run_captured(["image", "inspect", "--format", "{{json .}}", image])?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // docker: "No such image"; podman: "image not known".
            let stderr_lower = stderr.to_ascii_lowercase();
            if ["no such image", "image not known"]
                .iter()
                .any(|m| stderr_lower.contains(m))
            {
                return Ok(None);
            }
            return Err(cli_error(&stderr));
        }
        parse_image_config(&output.stdout)
            .with_context(|| format!("reading the configuration of image {image}"))
            .map(Some)
    }

    /// Makes the image local the way `docker run --pull POLICY` would.
    pub fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<ImageConfig> {
        if policy == PullPolicy::Always {
            self.pull(image)?;
        }
        if let Some(config) = self.inspect_image(image)? {
            return Ok(config);
        }
        if policy == PullPolicy::Never {
            bail!("no such image: {image} (and --pull=never)");
        }
        eprintln!("Unable to find image '{image}' locally");
        self.pull(image)?;
        self.inspect_image(image)?
            .ok_or_else(|| anyhow!("image {image} is still missing after pulling it"))
    }

    /// `docker pull`, its progress on stderr as `docker run` shows it.
    fn pull(&self, image: &str) -> Result<()> {
        let status = Command::new(self.program.command())
            .args(["pull", image])
            .stdout(io::stderr())
            .status()
            .context("running docker pull")?;
        if !status.success() {
            bail!("pulling image {image} failed (see above)");
        }
        Ok(())
    }

    /// Runs `asme probe` as root in a throwaway container of the image `image`.
    pub fn probe(&self, image: &ImageConfig, exe: &Path) -> Result<ImageFacts> {
        let image_id = image.id.as_str();
        // The program the image starts, which the probe reads as a script.
        let program = image
            .entrypoint
            .iter()
            .chain(&image.cmd)
            .flatten()
            .next()
            .map(String::as_str);
        let output = self
            .output(
                [
                    "run".as_ref(),
                    "--rm".as_ref(),
                    "--network=none".as_ref(),
                    "--user=0:0".as_ref(),
                    "--log-driver=none".as_ref(),
                    format!("--entrypoint={INIT_PATH}").as_ref(),
                    "--mount".as_ref(),
                    init_mount(exe).as_ref(),
                    OsStr::new(image_id),
                    "probe".as_ref(),
                    "--".as_ref(),
                ]
                .into_iter()
                .chain(program.map(OsStr::new)),
            )
            .with_context(|| format!("probing image {image_id}"))?;
        serde_json::from_str(output.trim())
            .with_context(|| format!("reading the probe of image {image_id}"))
    }

    /// `docker import` of a tar stream (`-` as the source), with Dockerfile-style changes.
    pub fn import(&self, tar: &[u8], tag: &str, changes: &[&str]) -> Result<()> {
        use std::io::Write;
        let mut command = Command::new(self.program.command());
        command.arg("import");
        for change in changes {
            command.args(["--change", change]);
        }
        let mut child = command
            .args(["-", tag])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running docker import")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(tar)
            .context("sending the image to docker import")?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            return Err(cli_error(&String::from_utf8_lossy(&output.stderr)));
        }
        Ok(())
    }

    /// asme's own image (its binary alone, at `/asme`), imported once per binary content; the
    /// agent and `asme fix` run in containers of it.
    pub fn self_image(&self, exe: &Path) -> Result<String> {
        let binary = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
        let tag = format!("asme:{:016x}", crate::cache::fnv1a(&binary));
        if self.inspect_image(&tag)?.is_none() {
            self.import_self(exe, &tag, &[&format!("LABEL {SELF_IMAGE_LABEL}")])?;
        }
        Ok(tag)
    }

    /// Imports an image that holds nothing but asme's own binary, at `/asme` (the agent's and
    /// doctor's images: nothing is pulled).
    pub fn import_self(&self, exe: &Path, tag: &str, changes: &[&str]) -> Result<()> {
        let binary = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(binary.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, "asme", binary.as_slice())?;
        self.import(&tar.into_inner()?, tag, changes)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawImage {
    id: String,
    config: Option<RawConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    env: Option<Vec<String>>,
}

fn parse_image_config(json: &[u8]) -> Result<ImageConfig> {
    // Podman 4 prints `{{json .}}` of one image as a list of one.
    let raw: RawImage = match serde_json::from_slice::<Vec<RawImage>>(json) {
        Ok(mut list) if list.len() == 1 => list.remove(0),
        _ => serde_json::from_slice(json)?,
    };
    let config = raw.config.unwrap_or_default();
    // Podman gives the bare digest; docker (and the cache's keys) say `sha256:` first.
    let id = if raw.id.contains(':') {
        raw.id
    } else {
        format!("sha256:{}", raw.id)
    };
    Ok(ImageConfig {
        id,
        entrypoint: config.entrypoint,
        cmd: config.cmd,
        user: config.user.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_from_inspect_json() {
        let json = br#"{"Id":"sha256:abc","Config":{"Entrypoint":["/ep"],"Cmd":null,"User":"app","Env":["PATH=/bin"]}}"#;
        let config = parse_image_config(json).unwrap();
        assert_eq!(config.id, "sha256:abc");
        assert_eq!(config.entrypoint, Some(vec!["/ep".to_string()]));
        assert_eq!(config.cmd, None);
        assert_eq!(config.user, "app");
        // Podman 4: a list of one, and the bare digest.
        let podman = br#"[{"Id":"69631f","Config":{"Env":["PATH=/bin"],"Cmd":["sh"]}}]"#;
        let config = parse_image_config(podman).unwrap();
        assert_eq!(config.id, "sha256:69631f");
        assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
        // docker import without changes leaves Config null.
        let bare = parse_image_config(br#"{"Id":"sha256:x","Config":null}"#).unwrap();
        assert_eq!(
            bare,
            ImageConfig {
                id: "sha256:x".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn pull_policies() {
        assert_eq!(PullPolicy::parse(None).unwrap(), PullPolicy::Missing);
        assert_eq!(
            PullPolicy::parse(Some("always")).unwrap(),
            PullPolicy::Always
        );
        assert_eq!(PullPolicy::parse(Some("never")).unwrap(), PullPolicy::Never);
        assert!(PullPolicy::parse(Some("sometimes")).is_err());
    }
}

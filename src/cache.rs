//! asme's per-user cache: image facts by image id, account files by content.
//!
//! Both are immutable for their key, so a run after the first one for an image costs no
//! container start. Account files stay as long as a container may mount them again
//! (`docker start`, `docker restart`), so they are never removed by a run.

use std::fs;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bumped when the meaning of a cached file changes.
const LAYOUT: &str = "v1";

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache folder: $XDG_CACHE_HOME/asme or ~/.cache/asme for a user,
    /// /var/cache/asme for root. Root never writes into a user's HOME (under `sudo` HOME is
    /// often still the user's), which would leave root-owned files there.
    pub fn open() -> Result<Cache> {
        let uid = rustix::process::geteuid();
        let base = if uid.is_root() {
            PathBuf::from("/var/cache/asme")
        } else if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Path::new(&xdg).join("asme")
        } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Path::new(&home).join(".cache/asme")
        } else {
            PathBuf::from(format!("/tmp/asme-{}", uid.as_raw()))
        };
        let root = base.join(LAYOUT);
        fs::create_dir_all(&root)
            .with_context(|| format!("creating the cache folder {}", root.display()))?;
        check_owned(&base, uid.as_raw())?;
        Ok(Cache { root })
    }

    /// What is known of an image (immutable for its id), from the cache or else from `fetch`
    /// (then cached).
    pub fn image_facts<T: Serialize + DeserializeOwned>(
        &self,
        image_id: &str,
        fetch: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(path) = self.image_file(image_id) else {
            bail!("unexpected image id '{image_id}'");
        };
        if let Ok(text) = fs::read_to_string(&path)
            && let Ok(facts) = serde_json::from_str(&text)
        {
            return Ok(facts);
        }
        let facts = fetch()?;
        write_atomic(&path, serde_json::to_string(&facts)?.as_bytes())?;
        Ok(facts)
    }

    /// The cache's own folder (`.../asme/v1`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the fuse strategy's mount points live while a run uses them.
    pub fn mount_dir(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// Where `asme doctor` tries the strategies when the folder it checks is not writable.
    pub fn doctor_dir(&self) -> Result<PathBuf> {
        let dir = self.root.join("doctor");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Where the `fix` strategy's pending repairs are journaled.
    pub fn pending_dir(&self) -> PathBuf {
        self.root.join("pending")
    }

    /// Drops what is cached about an image that is being removed.
    pub fn forget_image(&self, image_id: &str) {
        if let Some(path) = self.image_file(image_id) {
            let _ = fs::remove_file(path);
        }
    }

    /// Where the facts of an image id are kept; `None` for an id that is not a plain digest.
    fn image_file(&self, image_id: &str) -> Option<PathBuf> {
        let name = image_id.strip_prefix("sha256:").unwrap_or(image_id);
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| self.root.join("images").join(format!("{name}.json")))
    }

    /// Host paths of passwd and group files with these contents, written once and shared.
    pub fn account_files(&self, passwd: &str, group: &str) -> Result<(PathBuf, PathBuf)> {
        Ok((
            self.content_file("passwd", passwd)?,
            self.content_file("group", group)?,
        ))
    }

    fn content_file(&self, kind: &str, content: &str) -> Result<PathBuf> {
        let path = self
            .root
            .join("accounts")
            .join(format!("{kind}-{:016x}", fnv1a(content.as_bytes())));
        // The hash only names the file; equality of content is what allows reuse.
        if fs::read(&path).is_ok_and(|existing| existing == content.as_bytes()) {
            return Ok(path);
        }
        write_atomic(&path, content.as_bytes())?;
        Ok(path)
    }
}

impl Cache {
    /// Whether the filesystem of `fd` is remembered to refuse idmapped mounts. The memory
    /// lasts an hour: a refusal that came from elsewhere (an agent in the wrong namespace, a
    /// kernel since upgraded) must not send every run to FUSE for as long as the mount lives.
    pub fn idmap_unsupported(&self, fd: BorrowedFd<'_>) -> bool {
        const REMEMBERED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);
        filesystem_key(fd).is_some_and(|key| {
            fs::metadata(self.root.join("no-idmap").join(key))
                .and_then(|meta| meta.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age < REMEMBERED_FOR))
        })
    }

    /// Remembers that the filesystem of `fd` refuses idmapped mounts (probed once per
    /// filesystem; a failure to remember only costs a probe next time).
    pub fn remember_idmap_unsupported(&self, fd: BorrowedFd<'_>) {
        if let Some(key) = filesystem_key(fd) {
            let _ = write_atomic(&self.root.join("no-idmap").join(key), b"");
        }
    }
}

/// Names a mount: device, filesystem type and mount id (a device number alone is reused by
/// the next FUSE or NFS mount).
fn filesystem_key(fd: BorrowedFd<'_>) -> Option<String> {
    let (dev, fs_type, mount) = crate::sys::fs::mount_identity(fd).ok()?;
    Some(format!("{dev:x}-{fs_type:x}-{mount:x}"))
}

/// Writes a 0644 file through a temporary name and rename(2), so a reader (or a container
/// mounting it) never sees half a file.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = path.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(content)?;
        // The umask may have narrowed the mode; accounts must be readable by every container
        // user.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// A cache in a shared place (/tmp) must be ours, or another user could feed us accounts.
fn check_owned(dir: &Path, uid: u32) -> Result<()> {
    let meta = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid {
        bail!(
            "the cache folder {} is not a folder owned by uid {uid}",
            dir.display()
        );
    }
    Ok(())
}

/// FNV-1a, 64 bits: a stable, dependency-free name for content.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .copied()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

//! `asme probe`: read, from inside a throwaway container, what an image holds that account
//! synthesis needs: its passwd and group text and who owns each home folder.
//!
//! The host cannot read an image's files without a container, and these facts never change for
//! an image id, so `run` asks once per image and caches the answer.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use serde::{Deserialize, Serialize};

use crate::identity::PasswdFile;

/// What an image holds, as seen by root inside a container of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// /etc/passwd, or `None` when the image has none.
    pub passwd: Option<String>,
    /// /etc/group, or `None` when the image has none.
    pub group: Option<String>,
    /// lstat(2) of every home folder named in passwd, and of /home.
    pub paths: BTreeMap<String, PathFact>,
}

/// Type and ownership of one path in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFact {
    pub kind: PathKind,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Dir,
    File,
    Symlink,
    Other,
}

impl ImageFacts {
    /// Reads the facts from this container's root filesystem.
    pub fn collect() -> io::Result<ImageFacts> {
        let passwd = read_optional("/etc/passwd")?;
        let group = read_optional("/etc/group")?;
        let mut paths = BTreeMap::new();
        let homes = PasswdFile::parse(passwd.as_deref().unwrap_or(""))
            .entries()
            .map(|e| e.home.clone())
            .collect::<Vec<_>>();
        for path in homes.into_iter().chain(["/home".to_string()]) {
            if let Some(fact) = lstat(&path)? {
                paths.insert(path, fact);
            }
        }
        Ok(ImageFacts {
            passwd,
            group,
            paths,
        })
    }
}

fn read_optional(path: &str) -> io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("reading {path}: {e}"))),
    }
}

fn lstat(path: &str) -> io::Result<Option<PathFact>> {
    if !path.starts_with('/') {
        return Ok(None);
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("lstat {path}: {e}"))),
    };
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        PathKind::Dir
    } else if file_type.is_symlink() {
        PathKind::Symlink
    } else if file_type.is_file() {
        PathKind::File
    } else {
        debug_assert!(
            file_type.is_fifo()
                || file_type.is_socket()
                || file_type.is_char_device()
                || file_type.is_block_device()
        );
        PathKind::Other
    };
    Ok(Some(PathFact {
        kind,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    }))
}

/// Entry point of `asme probe`: prints the facts as one JSON line on stdout.
pub fn main() -> anyhow::Result<()> {
    let facts = ImageFacts::collect()?;
    println!("{}", serde_json::to_string(&facts)?);
    Ok(())
}

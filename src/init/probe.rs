//! `asme probe [PROGRAM]`: read, from inside a throwaway container, what an image holds that
//! account synthesis needs (its passwd and group text and who owns each home folder), and
//! whether the program it starts is a script that changes users (`ProgramFacts`).
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
    /// The image's own program (ENTRYPOINT, else CMD), read as a script. Required, though
    /// an `Option` (serde would take a missing one as `None`): a cached probe from before it
    /// existed fails to read, and the image is probed again.
    #[serde(deserialize_with = "Option::deserialize")]
    pub program: Option<ProgramFacts>,
}

/// What the image's program does before the service starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramFacts {
    /// As the image names it (what a run's command line is compared with).
    pub name: String,
    /// A script that hands files to other users or drops to one (`chown`, `gosu`, `su-exec`,
    /// `setpriv`...): what the official database images' entrypoints do. Several uids will
    /// then write into bind mounts.
    pub changes_users: bool,
}

/// Words in an entrypoint script that give files to another user or run as one.
const CHANGES_USERS: [&str; 8] = [
    "chown",
    "gosu",
    "su-exec",
    "setpriv",
    "runuser",
    "setuidgid",
    "chpst",
    "--userspec",
];

impl ProgramFacts {
    /// Reads `name` (found on this container's PATH if it has no `/`): a script (`#!`) that
    /// names one of [`CHANGES_USERS`] changes users; a binary, or nothing found, does not.
    pub fn read(name: &str) -> ProgramFacts {
        let changes_users = find(name)
            .and_then(|path| {
                use std::io::Read;
                let mut text = Vec::new();
                fs::File::open(path)
                    .ok()?
                    .take(256 * 1024)
                    .read_to_end(&mut text)
                    .ok()?;
                Some(script_changes_users(&text))
            })
            .unwrap_or(false);
        ProgramFacts {
            name: name.to_string(),
            changes_users,
        }
    }
}

/// Whether `text` is a script naming one of [`CHANGES_USERS`] as a word.
pub fn script_changes_users(text: &[u8]) -> bool {
    if !text.starts_with(b"#!") {
        return false;
    }
    let text = String::from_utf8_lossy(text);
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(|c: char| c.is_whitespace() || ";|&()`$\"'".contains(c)))
        .any(|word| CHANGES_USERS.contains(&word))
}

fn find(name: &str) -> Option<std::path::PathBuf> {
    if name.contains('/') {
        return Some(name.into());
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    path.split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
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
    /// Reads the facts from this container's root filesystem; `program` is the image's.
    pub fn collect(program: Option<&str>) -> io::Result<ImageFacts> {
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
            program: program.map(ProgramFacts::read),
        })
    }
}

impl ImageFacts {
    /// The uid and gid a container user spec (`--user` or the image's USER) runs as, resolved
    /// against the image's files as runc does: a name must exist; without a group, the entry's
    /// gid, or 0 for a bare number with no entry.
    pub fn ids_of(&self, user: &str) -> Result<(u32, u32), String> {
        if user.is_empty() {
            return Ok((0, 0));
        }
        let passwd = PasswdFile::parse(self.passwd.as_deref().unwrap_or(""));
        let (name, group) = match user.split_once(':') {
            Some((name, group)) => (name, Some(group)),
            None => (user, None),
        };
        let entry = match name.parse::<u32>() {
            Ok(uid) => passwd
                .by_uid(uid)
                .cloned()
                .map(|e| (uid, e.gid))
                .or(Some((uid, 0))),
            Err(_) => passwd.by_name(name).map(|e| (e.uid, e.gid)),
        };
        let (uid, entry_gid) = entry.ok_or_else(|| {
            format!("unable to find user {name}: no matching entries in passwd file")
        })?;
        let gid = match group {
            None => entry_gid,
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => crate::identity::GroupFile::parse(self.group.as_deref().unwrap_or(""))
                    .by_name(group)
                    .map(|g| g.gid)
                    .ok_or_else(|| {
                        format!("unable to find group {group}: no matching entries in group file")
                    })?,
            },
        };
        Ok((uid, gid))
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
pub fn main(program: Option<&str>) -> anyhow::Result<()> {
    let facts = ImageFacts::collect(program)?;
    println!("{}", serde_json::to_string(&facts)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_cached_before_programs_were_read_is_not_taken() {
        let old = r#"{"passwd":"root:x:0:0::/root:/bin/sh\n","group":null,"paths":{}}"#;
        assert!(serde_json::from_str::<ImageFacts>(old).is_err());
        let new = r#"{"passwd":null,"group":null,"paths":{},"program":null}"#;
        assert!(serde_json::from_str::<ImageFacts>(new).is_ok());
    }

    #[test]
    fn scripts_that_change_users_are_told_apart() {
        let yes: [&[u8]; 4] = [
            b"#!/bin/sh\nchown -R postgres \"$PGDATA\"\nexec gosu postgres \"$@\"\n",
            b"#!/bin/bash\nset -e\nif [ \"$(id -u)\" = 0 ]; then exec su-exec redis \"$0\"; fi\n",
            b"#!/bin/sh\nexec setpriv --reuid=pg --regid=pg --init-groups \"$0\" \"$@\"\n",
            b"#!/bin/sh\nfind /data \\! -user mysql -exec chown mysql '{}' +\n",
        ];
        for text in yes {
            assert!(
                script_changes_users(text),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let no: [&[u8]; 4] = [
            b"#!/bin/sh\nexec make \"$@\"\n",
            b"#!/bin/sh\n# we never chown here\nexec node server.js\n",
            b"\x7fELF\x02\x01chown",
            b"#!/bin/sh\necho chowned > /tmp/log\n",
        ];
        for text in no {
            assert!(
                !script_changes_users(text),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

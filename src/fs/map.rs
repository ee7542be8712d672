//! The id map of `asme mount`: bindfs's `--map` syntax, and both directions of the mapping.
//!
//! `user1/user2` shows SOURCE's user1 as user2 in the mount, and stores what user2 creates or
//! is given (chown) as user1; `@group1/@group2` does the same for groups. Ids the map does not
//! name pass through unchanged in both directions.

use std::fmt;

use thiserror::Error;

use crate::identity::{GroupFile, PasswdFile};

/// One side of the map: pairs of (id on SOURCE, id in the mount).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairs(Vec<(u32, u32)>);

impl Pairs {
    /// The id the mount shows for `source`.
    pub fn to_mount(&self, source: u32) -> u32 {
        self.0
            .iter()
            .find(|(s, _)| *s == source)
            .map_or(source, |(_, m)| *m)
    }

    /// The id SOURCE stores for `mount`.
    pub fn to_source(&self, mount: u32) -> u32 {
        self.0
            .iter()
            .find(|(_, m)| *m == mount)
            .map_or(mount, |(s, _)| *s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Users and groups: whom SOURCE's owners are shown as in the mount, and back (not
/// `crate::idmap::IdMap`, the ranges of a kernel id-mapped mount).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerMap {
    pub users: Pairs,
    pub groups: Pairs,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapError {
    #[error("bad --map entry {0:?}: expected user1/user2 or @group1/@group2")]
    Shape(String),
    #[error("bad --map entry {0:?}: a user maps to a user and a group to a group")]
    Mixed(String),
    #[error("--map: no such user {0:?}")]
    NoUser(String),
    #[error("--map: no such group {0:?}")]
    NoGroup(String),
    #[error("--map: {0} is mapped twice")]
    Twice(String),
}

impl OwnerMap {
    /// The default: `uid`/`gid` (the user who mounts) shown as root. Root's is the identity.
    pub fn invoker_as_root(uid: u32, gid: u32) -> OwnerMap {
        let mut map = OwnerMap::default();
        if uid != 0 {
            map.users.0.push((uid, 0));
        }
        if gid != 0 {
            map.groups.0.push((gid, 0));
        }
        map
    }

    /// `source` shown as `mount` (users and groups): how `asme run` maps the owner to the
    /// container's user.
    pub fn single(source: (u32, u32), mount: (u32, u32)) -> OwnerMap {
        OwnerMap {
            users: Pairs(vec![(source.0, mount.0)]),
            groups: Pairs(vec![(source.1, mount.1)]),
        }
    }

    /// The SOURCE side of the first user and group pairs: whose the files are, for a map
    /// made by [`OwnerMap::single`].
    pub fn first_source(&self) -> Option<(u32, u32)> {
        Some(((self.users.0.first()?).0, (self.groups.0.first()?).0))
    }

    /// Parses SPEC (`a/b:@c/@d:...`), names resolved in the host's passwd and group files.
    pub fn parse(spec: &str, passwd: &PasswdFile, group: &GroupFile) -> Result<OwnerMap, MapError> {
        let mut map = OwnerMap::default();
        for entry in spec.split(':') {
            let Some((from, to)) = entry.split_once('/') else {
                return Err(MapError::Shape(entry.to_owned()));
            };
            if from.is_empty() || to.is_empty() || to.contains('/') {
                return Err(MapError::Shape(entry.to_owned()));
            }
            match (from.strip_prefix('@'), to.strip_prefix('@')) {
                (Some(from), Some(to)) => {
                    let pair = (group_id(from, group)?, group_id(to, group)?);
                    push_unique(&mut map.groups, pair, entry)?;
                }
                (None, None) => {
                    let pair = (user_id(from, passwd)?, user_id(to, passwd)?);
                    push_unique(&mut map.users, pair, entry)?;
                }
                _ => return Err(MapError::Mixed(entry.to_owned())),
            }
        }
        Ok(map)
    }
}

/// A map whose one side names an id twice is ambiguous in one direction.
fn push_unique(pairs: &mut Pairs, pair: (u32, u32), entry: &str) -> Result<(), MapError> {
    if pairs.0.iter().any(|(s, m)| *s == pair.0 || *m == pair.1) {
        return Err(MapError::Twice(entry.to_owned()));
    }
    pairs.0.push(pair);
    Ok(())
}

fn user_id(name: &str, passwd: &PasswdFile) -> Result<u32, MapError> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    passwd
        .by_name(name)
        .map(|e| e.uid)
        .ok_or_else(|| MapError::NoUser(name.to_owned()))
}

fn group_id(name: &str, group: &GroupFile) -> Result<u32, MapError> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    group
        .by_name(name)
        .map(|e| e.gid)
        .ok_or_else(|| MapError::NoGroup(name.to_owned()))
}

impl fmt::Display for OwnerMap {
    /// Back in SPEC syntax, numbers only (what `mount` shows and `asme run` passes on).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users = self.users.0.iter().map(|(s, m)| format!("{s}/{m}"));
        let groups = self.groups.0.iter().map(|(s, m)| format!("@{s}/@{m}"));
        let all: Vec<String> = users.chain(groups).collect();
        f.write_str(&all.join(":"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (PasswdFile, GroupFile) {
        (
            PasswdFile::parse("root:x:0:0::/root:/bin/sh\nalice:x:1234:1234::/home/a:/bin/sh\n"),
            GroupFile::parse("root:x:0:\nalice:x:1234:\nstaff:x:50:alice\n"),
        )
    }

    #[test]
    fn names_and_numbers() {
        let (p, g) = files();
        let map = OwnerMap::parse("alice/root:@alice/@0:7/8:@staff/@9", &p, &g).unwrap();
        assert_eq!(map.users.to_mount(1234), 0);
        assert_eq!(map.users.to_source(0), 1234);
        assert_eq!(map.users.to_mount(7), 8);
        assert_eq!(map.groups.to_mount(1234), 0);
        assert_eq!(map.groups.to_mount(50), 9);
        assert_eq!(map.groups.to_source(9), 50);
        assert_eq!(map.to_string(), "1234/0:7/8:@1234/@0:@50/@9");
    }

    #[test]
    fn unmapped_ids_pass_through_both_ways() {
        let (p, g) = files();
        let map = OwnerMap::parse("1234/0", &p, &g).unwrap();
        // Source root is not named: it stays root, and uid 1234 in the mount stays 1234.
        assert_eq!(map.users.to_mount(0), 0);
        assert_eq!(map.users.to_source(1234), 1234);
        assert_eq!(map.users.to_mount(999), 999);
        assert_eq!(map.users.to_source(999), 999);
        assert_eq!(map.groups.to_mount(1234), 1234);
    }

    #[test]
    fn default_map_is_the_invoker_as_root() {
        let map = OwnerMap::invoker_as_root(1000, 1000);
        assert_eq!(map.users.to_mount(1000), 0);
        assert_eq!(map.groups.to_source(0), 1000);
        assert_eq!(map.to_string(), "1000/0:@1000/@0");
        assert!(OwnerMap::invoker_as_root(0, 0).users.is_empty());
    }

    #[test]
    fn bad_specs_are_refused() {
        let (p, g) = files();
        let bad = |s: &str| OwnerMap::parse(s, &p, &g).unwrap_err();
        assert_eq!(bad(""), MapError::Shape(String::new()));
        assert_eq!(bad("1234"), MapError::Shape("1234".into()));
        assert_eq!(bad("1/2/3"), MapError::Shape("1/2/3".into()));
        assert_eq!(bad("1/"), MapError::Shape("1/".into()));
        assert_eq!(bad("1/2:"), MapError::Shape(String::new()));
        assert_eq!(bad("@1/2"), MapError::Mixed("@1/2".into()));
        assert_eq!(bad("bob/0"), MapError::NoUser("bob".into()));
        assert_eq!(bad("@nogroup/@0"), MapError::NoGroup("nogroup".into()));
        assert_eq!(bad("1/0:2/0"), MapError::Twice("2/0".into()));
        assert_eq!(bad("1/0:1/5"), MapError::Twice("1/5".into()));
        assert_eq!(bad("-1/0"), MapError::NoUser("-1".into()));
    }
}

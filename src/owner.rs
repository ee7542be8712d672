//! Who "me" is: the host uid/gid that files written into bind mounts must belong to.
//!
//! Owns parsing `--owner UID[:GID]`, choosing between that, sudo's variables and the real
//! ids, and reading the host's account files. Names are looked up by `identity` over those
//! files, not through NSS, which a static binary cannot use.

use std::fmt;
use std::str::FromStr;

use crate::identity::{GroupFile, PasswdFile};

/// The host user and group that should own what the container writes. Serialised as
/// `UID:GID`, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl From<Owner> for String {
    fn from(owner: Owner) -> String {
        owner.to_string()
    }
}

impl TryFrom<String> for Owner {
    type Error = OwnerSpecError;

    fn try_from(text: String) -> Result<Owner, OwnerSpecError> {
        text.parse()
    }
}

/// `UID[:GID]`; the gid defaults to the uid.
impl FromStr for Owner {
    type Err = OwnerSpecError;

    fn from_str(s: &str) -> Result<Owner, OwnerSpecError> {
        let spec: OwnerSpec = s.parse()?;
        Ok(Owner {
            uid: spec.uid,
            gid: spec.gid.unwrap_or(spec.uid),
        })
    }
}

/// `--owner` as written: a uid, and a gid if one was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerSpec {
    pub uid: u32,
    pub gid: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid owner '{0}': expected UID[:GID], numbers below 4294967295")]
pub struct OwnerSpecError(String);

impl FromStr for OwnerSpec {
    type Err = OwnerSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || OwnerSpecError(s.to_string());
        let (uid, gid) = match s.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (s, None),
        };
        let uid = parse_id(uid).ok_or_else(bad)?;
        let gid = gid.map(|g| parse_id(g).ok_or_else(bad)).transpose()?;
        Ok(OwnerSpec { uid, gid })
    }
}

/// An id as the kernel accepts it, in decimal digits only: 4294967295 is (uid_t)-1, "no
/// change", never an owner.
pub fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&id| id != u32::MAX)
}

/// Where the invoking identity comes from, so resolution can be tested without a process.
pub struct Invocation<'a> {
    /// Real uid and gid of the asme process.
    pub real: (u32, u32),
    /// SUDO_UID and SUDO_GID, as set by sudo(8).
    pub sudo_uid: Option<&'a str>,
    pub sudo_gid: Option<&'a str>,
    /// Host /etc/passwd text, for the primary gid of a bare `--owner UID`.
    pub host_passwd: &'a str,
}

/// Picks the owner: `--owner` first, then the user behind sudo, then the real ids.
///
/// sudo's variables count only when we really are root: an ordinary user could set them to
/// anything, and must not be able to make asme write files as someone else.
pub fn resolve(spec: Option<OwnerSpec>, inv: &Invocation) -> Owner {
    if let Some(spec) = spec {
        let gid = spec.gid.unwrap_or_else(|| {
            PasswdFile::parse(inv.host_passwd)
                .by_uid(spec.uid)
                .map_or(spec.uid, |e| e.gid)
        });
        return Owner { uid: spec.uid, gid };
    }
    if inv.real.0 == 0
        && let Some(uid) = inv.sudo_uid.and_then(parse_id)
    {
        let gid = inv.sudo_gid.and_then(parse_id).unwrap_or(uid);
        return Owner { uid, gid };
    }
    Owner {
        uid: inv.real.0,
        gid: inv.real.1,
    }
}

/// The owner for this invocation: `spec` (`--owner`), sudo's user, or the real ids.
pub fn invoking(spec: Option<OwnerSpec>) -> Owner {
    let sudo_uid = std::env::var("SUDO_UID").ok();
    let sudo_gid = std::env::var("SUDO_GID").ok();
    resolve(
        spec,
        &Invocation {
            real: crate::sys::real_ids(),
            sudo_uid: sudo_uid.as_deref(),
            sudo_gid: sudo_gid.as_deref(),
            host_passwd: &host_passwd_text(),
        },
    )
}

/// The host's /etc/passwd, parsed (empty where there is none).
pub fn host_passwd() -> PasswdFile {
    PasswdFile::parse(&host_passwd_text())
}

/// The host's /etc/group, parsed (empty where there is none).
pub fn host_group() -> GroupFile {
    GroupFile::parse(&std::fs::read_to_string("/etc/group").unwrap_or_default())
}

fn host_passwd_text() -> String {
    std::fs::read_to_string("/etc/passwd").unwrap_or_default()
}

/// The owner's user and group names on the host, empty when the host has none.
pub fn host_names(owner: Owner, passwd: &PasswdFile, group: &GroupFile) -> (String, String) {
    let user = passwd
        .by_uid(owner.uid)
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let group = group
        .by_gid(owner.gid)
        .map(|e| e.name.clone())
        .unwrap_or_default();
    (user, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_spec_parsing() {
        let cases: &[(&str, Option<(u32, Option<u32>)>)] = &[
            ("1000", Some((1000, None))),
            ("1000:100", Some((1000, Some(100)))),
            ("0:0", Some((0, Some(0)))),
            ("4294967294", Some((4294967294, None))),
            ("4294967295", None),
            ("", None),
            (":", None),
            ("1000:", None),
            (":1000", None),
            ("alice", None),
            ("-1", None),
            ("+5", None),
            ("1000:100:7", None),
            (" 1000", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<OwnerSpec>().ok().map(|s| (s.uid, s.gid));
            assert_eq!(&got, want, "input {input:?}");
        }
    }

    const HOST_PASSWD: &str = "root:x:0:0::/root:/bin/sh\nalice:x:1234:4321::/home/alice:/bin/sh\n";

    fn inv<'a>(real: (u32, u32), sudo: Option<(&'a str, &'a str)>) -> Invocation<'a> {
        Invocation {
            real,
            sudo_uid: sudo.map(|s| s.0),
            sudo_gid: sudo.map(|s| s.1),
            host_passwd: HOST_PASSWD,
        }
    }

    #[test]
    fn resolution_order() {
        let spec = |s: &str| Some(s.parse::<OwnerSpec>().unwrap());
        let cases: &[(Option<OwnerSpec>, Invocation, Owner)] = &[
            (
                None,
                inv((1000, 1000), None),
                Owner {
                    uid: 1000,
                    gid: 1000,
                },
            ),
            (
                None,
                inv((0, 0), Some(("1234", "55"))),
                Owner { uid: 1234, gid: 55 },
            ),
            (
                None,
                inv((0, 0), Some(("1234", ""))),
                Owner {
                    uid: 1234,
                    gid: 1234,
                },
            ),
            // An ordinary user cannot borrow another identity through SUDO_UID.
            (
                None,
                inv((1000, 1000), Some(("0", "0"))),
                Owner {
                    uid: 1000,
                    gid: 1000,
                },
            ),
            (
                None,
                inv((0, 0), Some(("junk", "0"))),
                Owner { uid: 0, gid: 0 },
            ),
            (
                spec("7:8"),
                inv((0, 0), Some(("1234", "55"))),
                Owner { uid: 7, gid: 8 },
            ),
            (
                spec("1234"),
                inv((1000, 1000), None),
                Owner {
                    uid: 1234,
                    gid: 4321,
                },
            ),
            (
                spec("999"),
                inv((1000, 1000), None),
                Owner { uid: 999, gid: 999 },
            ),
        ];
        for (spec, inv, want) in cases {
            assert_eq!(
                resolve(*spec, inv),
                *want,
                "spec {spec:?} real {:?}",
                inv.real
            );
        }
    }

    #[test]
    fn owners_serialise_as_written() {
        let owner = Owner { uid: 1234, gid: 55 };
        assert_eq!(serde_json::to_string(&owner).unwrap(), r#""1234:55""#);
        assert_eq!(
            serde_json::from_str::<Owner>(r#""1234:55""#).unwrap(),
            owner
        );
        assert!(serde_json::from_str::<Owner>(r#""bob""#).is_err());
    }

    #[test]
    fn names_from_host_files() {
        let owner = Owner {
            uid: 1234,
            gid: 4321,
        };
        let passwd = PasswdFile::parse(HOST_PASSWD);
        let group = GroupFile::parse("alice:x:4321:\n");
        assert_eq!(
            host_names(owner, &passwd, &group),
            ("alice".into(), "alice".into())
        );
        assert_eq!(
            host_names(Owner { uid: 5, gid: 5 }, &passwd, &group),
            (String::new(), String::new())
        );
    }
}

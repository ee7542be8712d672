//! Who "me" is: the host uid/gid that files written into bind mounts must belong to.
//!
//! Owns parsing `--owner UID[:GID]` and choosing between that, sudo's variables and the real
//! ids. Host account names are looked up by `identity` over the host's files, not through NSS,
//! which a static binary cannot use.

use std::fmt;
use std::str::FromStr;

use crate::identity::{GroupFile, PasswdFile};

/// The host user and group that should own what the container writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
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

/// An id as the kernel accepts it: 4294967295 is (uid_t)-1, "no change", never an owner.
fn parse_id(s: &str) -> Option<u32> {
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

/// The owner's user and group names on the host, empty when the host has none.
pub fn host_names(owner: Owner, host_passwd: &str, host_group: &str) -> (String, String) {
    let user = PasswdFile::parse(host_passwd)
        .by_uid(owner.uid)
        .map(|e| e.name.clone())
        .unwrap_or_default();
    let group = GroupFile::parse(host_group)
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
    fn names_from_host_files() {
        let owner = Owner {
            uid: 1234,
            gid: 4321,
        };
        let group = "alice:x:4321:\n";
        assert_eq!(
            host_names(owner, HOST_PASSWD, group),
            ("alice".into(), "alice".into())
        );
        assert_eq!(
            host_names(Owner { uid: 5, gid: 5 }, HOST_PASSWD, group),
            (String::new(), String::new())
        );
    }
}

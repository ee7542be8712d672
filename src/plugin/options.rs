//! The options of `docker volume create -d asme -o source=ABS_DIR [-o owner=UID[:GID]]
//! [-o uid=N] [-o gid=N] [-o ro] [-o mapping=auto|idmap|fuse]`, checked and typed. Pure.
//!
//! dockerd hands them over as `VolumeDriver.Create`'s `Opts` map (from `-o`, from
//! `volume-opt=` of `--mount`, or from compose's `driver_opts`); `-o ro` arrives as
//! `"ro": ""`. A refusal here becomes the one line `docker volume create` prints, and no
//! volume is made. Whether the folder exists and who owns it is the driver's to find out;
//! [`resolve_owner`] then decides whose the files become, and the mapping itself is
//! `idmap`'s.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::owner::{Owner, OwnerSpec, OwnerSpecError, parse_id};

/// Every option the driver takes, in the order messages list them.
pub const KNOWN_OPTIONS: [&str; 6] = ["source", "owner", "uid", "gid", "ro", "mapping"];

/// Whether the container may write to the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// How the volume is mapped (`-o mapping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// idmap where the filesystem takes it, else asme's FUSE mapping.
    #[default]
    Auto,
    /// idmap only: a folder that refuses it fails the Mount.
    Idmap,
    /// asme's FUSE mapping always (what `asme run --strategy fuse` asks).
    Fuse,
}

impl Mapping {
    fn parse(text: &str) -> Option<Mapping> {
        match text {
            "auto" => Some(Mapping::Auto),
            "idmap" => Some(Mapping::Idmap),
            "fuse" => Some(Mapping::Fuse),
            _ => None,
        }
    }

    fn is_auto(&self) -> bool {
        *self == Mapping::Auto
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::Auto => "auto",
            Mapping::Idmap => "idmap",
            Mapping::Fuse => "fuse",
        })
    }
}

/// A volume as its options describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The host folder the volume shows, absolute, with `.` components and trailing
    /// slashes dropped.
    pub source: PathBuf,
    /// Whose the files become (`-o owner`); `None`: the folder's owner.
    #[serde(with = "owner_text", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerSpec>,
    /// The container uid that sees the owner's files as its own and whose writes are stored
    /// as the owner (default 0: the image's root, as under plain docker).
    pub uid: u32,
    /// The container gid mapped to the owner's group. It defaults to `uid`, not to 0: a
    /// volume is made for one container user, and images pair uid N with a group N
    /// (node 1000:1000, postgres 999:999, root 0:0) much as hosts give each user a private
    /// group. With a default of 0, `-o uid=1000` would store that user's group-1000 files
    /// with host gid 1000, not the owner's group. `Owner`'s `UID` without `:GID` reads the
    /// same way.
    pub gid: u32,
    pub access: Access,
    #[serde(default, skip_serializing_if = "Mapping::is_auto")]
    pub mapping: Mapping,
}

/// Why the options were refused. Each message is one line naming the option, as
/// `docker volume create` prints it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("missing option source: pass -o source=/absolute/folder")]
    MissingSource,
    #[error("source '{0}' is not an absolute path: pass -o source=/absolute/folder")]
    RelativeSource(String),
    #[error("{}", unknown_message(.0))]
    Unknown(Vec<String>),
    #[error("invalid {option} '{value}': expected a number from 0 to 4294967294")]
    BadId { option: &'static str, value: String },
    #[error(transparent)]
    BadOwner(#[from] OwnerSpecError),
    #[error("invalid ro '{0}': expected -o ro, -o ro=true or -o ro=false")]
    BadAccess(String),
    #[error("invalid mapping '{0}': expected auto, idmap or fuse")]
    BadMapping(String),
    #[error(
        "owner {0} is host root: a volume never stores files as uid or gid 0; \
         pass -o owner=UID:GID of an ordinary user"
    )]
    RootOwner(Owner),
    #[error(
        "source {} belongs to {owner}, host root, and a volume never stores files as uid or \
         gid 0: pass -o owner=UID:GID of an ordinary user",
        .folder.display()
    )]
    RootFolder { folder: PathBuf, owner: Owner },
}

fn unknown_message(names: &[String]) -> String {
    let quoted = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let plural = if names.len() == 1 { "" } else { "s" };
    format!(
        "unknown option{plural} {quoted}: the options are source, owner, uid, gid, ro and \
         mapping"
    )
}

impl VolumeSpec {
    /// A read-write volume of `source` with every other option at its default: the
    /// folder's owner, container uid and gid 0.
    pub fn new(source: impl Into<PathBuf>) -> VolumeSpec {
        VolumeSpec {
            source: source.into(),
            owner: None,
            uid: 0,
            gid: 0,
            access: Access::ReadWrite,
            mapping: Mapping::Auto,
        }
    }

    /// Reads `Create`'s options.
    ///
    /// # Errors
    ///
    /// An unknown option (all of them named), a missing or relative `source`, a bad
    /// `owner`, `uid` or `gid` (4294967295 included), an owner that is host root, or `ro`
    /// with a value other than empty, `true` or `false`.
    pub fn parse(opts: &HashMap<String, String>) -> Result<VolumeSpec, OptionError> {
        let mut unknown: Vec<String> = opts
            .keys()
            .filter(|k| !KNOWN_OPTIONS.contains(&k.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(OptionError::Unknown(unknown));
        }
        let source = match opts.get("source").map(String::as_str) {
            None | Some("") => return Err(OptionError::MissingSource),
            Some(text) if !Path::new(text).is_absolute() => {
                return Err(OptionError::RelativeSource(text.to_string()));
            }
            Some(text) => Path::new(text).components().collect(),
        };
        let owner = opts
            .get("owner")
            .map(|text| text.parse::<OwnerSpec>())
            .transpose()?;
        if let Some(spec) = owner {
            refuse_root_owner(Owner {
                uid: spec.uid,
                gid: spec.gid.unwrap_or(spec.uid),
            })?;
        }
        let uid = id_option(opts, "uid")?.unwrap_or(0);
        let gid = id_option(opts, "gid")?.unwrap_or(uid);
        let access = match opts.get("ro").map(String::as_str) {
            None | Some("false") => Access::ReadWrite,
            Some("" | "true") => Access::ReadOnly,
            Some(other) => return Err(OptionError::BadAccess(other.to_string())),
        };
        let mapping = match opts.get("mapping") {
            None => Mapping::Auto,
            Some(text) => {
                Mapping::parse(text).ok_or_else(|| OptionError::BadMapping(text.clone()))?
            }
        };
        Ok(VolumeSpec {
            source,
            owner,
            uid,
            gid,
            access,
            mapping,
        })
    }
}

fn id_option(
    opts: &HashMap<String, String>,
    option: &'static str,
) -> Result<Option<u32>, OptionError> {
    opts.get(option)
        .map(|value| {
            parse_id(value).ok_or_else(|| OptionError::BadId {
                option,
                value: value.clone(),
            })
        })
        .transpose()
}

/// Refuses an owner with uid or gid 0: a mapping onto host root would let any process in
/// the container create root-owned (even setuid-root) files on the host. The driver serves
/// requests from dockerd, not from a user it could check, so it never trusts a root owner,
/// whoever asked.
///
/// # Errors
///
/// [`OptionError::RootOwner`] when uid or gid is 0.
pub fn refuse_root_owner(owner: Owner) -> Result<(), OptionError> {
    if owner.uid == 0 || owner.gid == 0 {
        return Err(OptionError::RootOwner(owner));
    }
    Ok(())
}

/// Whose the files of a volume become: `-o owner=UID:GID`; for `-o owner=UID`, that user's
/// primary group (`primary_gid`, from the host's passwd) or else gid UID, as `asme
/// --owner` resolves it; without `-o owner`, the owner of the folder, `folder`.
///
/// # Errors
///
/// The owner found is host root ([`refuse_root_owner`]); for a root-owned folder the
/// message says to pass `-o owner`.
pub fn resolve_owner(
    spec: &VolumeSpec,
    folder: Owner,
    primary_gid: impl FnOnce(u32) -> Option<u32>,
) -> Result<Owner, OptionError> {
    let Some(wanted) = spec.owner else {
        return refuse_root_owner(folder)
            .map(|()| folder)
            .map_err(|_| OptionError::RootFolder {
                folder: spec.source.clone(),
                owner: folder,
            });
    };
    let owner = Owner {
        uid: wanted.uid,
        gid: wanted
            .gid
            .unwrap_or_else(|| primary_gid(wanted.uid).unwrap_or(wanted.uid)),
    };
    refuse_root_owner(owner).map(|()| owner)
}

/// The `--mount` value that gives a container, at `dest`, an anonymous volume of asme's
/// driver over the host folder `source`, where container ids `container` are stored as
/// `owner`. docker creates the volume with these options at `docker run` and removes it
/// with the container (`--rm`, `docker rm -v`).
pub fn anonymous_volume(
    dest: &str,
    source: &Path,
    owner: Owner,
    container: (u32, u32),
    access: Access,
    mapping: Mapping,
) -> String {
    use crate::engine::mount_arg::csv_quote;
    let mut fields = vec![
        "type=volume".to_string(),
        csv_quote(&format!("dst={dest}")),
        format!("volume-driver={}", super::install::NAME),
        csv_quote(&format!("volume-opt=source={}", source.display())),
        format!("volume-opt=owner={owner}"),
        format!("volume-opt=uid={}", container.0),
        format!("volume-opt=gid={}", container.1),
    ];
    if mapping != Mapping::Auto {
        fields.push(format!("volume-opt=mapping={mapping}"));
    }
    // The driver makes the mapping itself read-only: docker refuses `readonly` on an
    // anonymous volume ("must not set ReadOnly mode when using anonymous volumes").
    if access == Access::ReadOnly {
        fields.push("volume-opt=ro=true".into());
    }
    fields.join(",")
}

/// `-o owner` as written (`UID` or `UID:GID`), for the state file.
mod owner_text {
    use super::*;
    use serde::{Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(owner: &Option<OwnerSpec>, s: S) -> Result<S::Ok, S::Error> {
        owner.map(|o| Written(o).to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OwnerSpec>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(D::Error::custom))
            .transpose()
    }

    struct Written(OwnerSpec);

    impl fmt::Display for Written {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0.gid {
                Some(gid) => write!(f, "{}:{gid}", self.0.uid),
                None => write!(f, "{}", self.0.uid),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec(source: &str) -> VolumeSpec {
        VolumeSpec::new(source)
    }

    fn owner(uid: u32, gid: Option<u32>) -> Option<OwnerSpec> {
        Some(OwnerSpec { uid, gid })
    }

    fn bad_id(option: &'static str, value: &str) -> OptionError {
        OptionError::BadId {
            option,
            value: value.into(),
        }
    }

    #[test]
    fn accepted() {
        let cases: &[(&[(&str, &str)], VolumeSpec)] = &[
            (&[("source", "/home/a/src")], spec("/home/a/src")),
            (&[("source", "/home/a/./src/")], spec("/home/a/src")),
            (&[("source", "/")], spec("/")),
            (
                &[("source", "/s"), ("owner", "1234")],
                VolumeSpec {
                    owner: owner(1234, None),
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("owner", "1234:55")],
                VolumeSpec {
                    owner: owner(1234, Some(55)),
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("uid", "1000")],
                VolumeSpec {
                    uid: 1000,
                    gid: 1000,
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("uid", "1000"), ("gid", "0")],
                VolumeSpec {
                    uid: 1000,
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("gid", "100")],
                VolumeSpec {
                    gid: 100,
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("uid", "4294967294")],
                VolumeSpec {
                    uid: 4294967294,
                    gid: 4294967294,
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("ro", "")],
                VolumeSpec {
                    access: Access::ReadOnly,
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("ro", "true")],
                VolumeSpec {
                    access: Access::ReadOnly,
                    ..spec("/s")
                },
            ),
            (&[("source", "/s"), ("ro", "false")], spec("/s")),
            (&[("source", "/s"), ("mapping", "auto")], spec("/s")),
            (
                &[("source", "/s"), ("mapping", "fuse")],
                VolumeSpec {
                    mapping: Mapping::Fuse,
                    ..spec("/s")
                },
            ),
            (
                &[("source", "/s"), ("mapping", "idmap")],
                VolumeSpec {
                    mapping: Mapping::Idmap,
                    ..spec("/s")
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                VolumeSpec::parse(&opts(input)).as_ref(),
                Ok(want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn refused() {
        let bad_owner = |text: &str| OptionError::BadOwner(text.parse::<OwnerSpec>().unwrap_err());
        let root = |uid, gid| OptionError::RootOwner(Owner { uid, gid });
        let cases: &[(&[(&str, &str)], OptionError)] = &[
            (&[], OptionError::MissingSource),
            (&[("source", "")], OptionError::MissingSource),
            (&[("uid", "0")], OptionError::MissingSource),
            (
                &[("source", "src")],
                OptionError::RelativeSource("src".into()),
            ),
            (
                &[("source", "./src")],
                OptionError::RelativeSource("./src".into()),
            ),
            (
                &[("source", "/s"), ("size", "1G")],
                OptionError::Unknown(vec!["size".into()]),
            ),
            // Unknown options are named before anything else is looked at, all of them.
            (
                &[("Source", "/s"), ("type", "none"), ("o", "bind")],
                OptionError::Unknown(vec!["Source".into(), "o".into(), "type".into()]),
            ),
            (&[("source", "/s"), ("uid", "")], bad_id("uid", "")),
            (&[("source", "/s"), ("uid", "-1")], bad_id("uid", "-1")),
            (&[("source", "/s"), ("uid", "root")], bad_id("uid", "root")),
            (
                &[("source", "/s"), ("uid", "4294967295")],
                bad_id("uid", "4294967295"),
            ),
            (
                &[("source", "/s"), ("gid", "4294967295")],
                bad_id("gid", "4294967295"),
            ),
            (
                &[("source", "/s"), ("gid", "99999999999")],
                bad_id("gid", "99999999999"),
            ),
            (&[("source", "/s"), ("owner", "")], bad_owner("")),
            (&[("source", "/s"), ("owner", "alice")], bad_owner("alice")),
            (&[("source", "/s"), ("owner", "1000:")], bad_owner("1000:")),
            (
                &[("source", "/s"), ("owner", "4294967295")],
                bad_owner("4294967295"),
            ),
            (&[("source", "/s"), ("owner", "0")], root(0, 0)),
            (&[("source", "/s"), ("owner", "0:1000")], root(0, 1000)),
            (&[("source", "/s"), ("owner", "1000:0")], root(1000, 0)),
            (
                &[("source", "/s"), ("ro", "yes")],
                OptionError::BadAccess("yes".into()),
            ),
            (
                &[("source", "/s"), ("ro", "1")],
                OptionError::BadAccess("1".into()),
            ),
            (
                &[("source", "/s"), ("mapping", "bindfs")],
                OptionError::BadMapping("bindfs".into()),
            ),
        ];
        for (input, want) in cases {
            let got = VolumeSpec::parse(&opts(input));
            assert_eq!(got.as_ref(), Err(want), "{input:?}");
            let line = want.to_string();
            assert!(!line.contains('\n') && !line.is_empty(), "{line}");
        }
    }

    #[test]
    fn messages_name_the_option_and_the_fix() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[],
                "missing option source: pass -o source=/absolute/folder",
            ),
            (
                &[("source", "/s"), ("size", "1")],
                "unknown option 'size': the options are source, owner, uid, gid, ro and \
                 mapping",
            ),
            (
                &[("source", "/s"), ("a", "1"), ("b", "2")],
                "unknown options 'a', 'b': the options are",
            ),
            (
                &[("source", "/s"), ("uid", "4294967295")],
                "invalid uid '4294967295': expected a number from 0 to 4294967294",
            ),
            (
                &[("source", "/s"), ("owner", "bob")],
                "invalid owner 'bob': expected UID[:GID]",
            ),
            (
                &[("source", "/s"), ("owner", "0")],
                "owner 0:0 is host root: a volume never stores files as uid or gid 0; \
                 pass -o owner=UID:GID",
            ),
        ];
        for (input, want) in cases {
            let got = VolumeSpec::parse(&opts(input)).unwrap_err().to_string();
            assert!(got.starts_with(want), "{input:?}: {got}");
        }
    }

    /// What `asme run` gives docker: the driver's options, the mapping only when not auto.
    #[test]
    fn anonymous_volumes_carry_the_options() {
        let owner = Owner {
            uid: 1234,
            gid: 1234,
        };
        let auto = anonymous_volume(
            "/w",
            Path::new("/home/a,b"),
            owner,
            (0, 0),
            Access::ReadWrite,
            Mapping::Auto,
        );
        assert_eq!(
            auto,
            "type=volume,dst=/w,volume-driver=asme,\"volume-opt=source=/home/a,b\",\
             volume-opt=owner=1234:1234,volume-opt=uid=0,volume-opt=gid=0"
        );
        let fuse = anonymous_volume(
            "/w",
            Path::new("/s"),
            owner,
            (1000, 1000),
            Access::ReadOnly,
            Mapping::Fuse,
        );
        assert!(
            fuse.ends_with(
                "volume-opt=uid=1000,volume-opt=gid=1000,volume-opt=mapping=fuse,\
                 volume-opt=ro=true"
            ),
            "{fuse}"
        );
    }

    #[test]
    fn root_owners_are_refused() {
        let cases: &[(u32, u32, bool)] = &[
            (1234, 1234, true),
            (1, 1, true),
            (0, 0, false),
            (0, 1234, false),
            (1234, 0, false),
        ];
        for &(uid, gid, ok) in cases {
            assert_eq!(
                refuse_root_owner(Owner { uid, gid }).is_ok(),
                ok,
                "{uid}:{gid}"
            );
        }
    }

    #[test]
    fn owner_resolution() {
        let folder = Owner {
            uid: 1000,
            gid: 100,
        };
        let passwd = |uid| (uid == 1234).then_some(4321);
        let with_owner = |o| VolumeSpec {
            owner: o,
            ..spec("/s")
        };
        let cases: &[(Option<OwnerSpec>, Owner, Result<Owner, OptionError>)] = &[
            (None, folder, Ok(folder)),
            (owner(7, Some(8)), folder, Ok(Owner { uid: 7, gid: 8 })),
            (
                owner(1234, None),
                folder,
                Ok(Owner {
                    uid: 1234,
                    gid: 4321,
                }),
            ),
            (owner(999, None), folder, Ok(Owner { uid: 999, gid: 999 })),
            // A root-owned folder needs -o owner; with it, the folder's owner is not used.
            (
                None,
                Owner { uid: 0, gid: 0 },
                Err(OptionError::RootFolder {
                    folder: "/s".into(),
                    owner: Owner { uid: 0, gid: 0 },
                }),
            ),
            (
                None,
                Owner { uid: 1000, gid: 0 },
                Err(OptionError::RootFolder {
                    folder: "/s".into(),
                    owner: Owner { uid: 1000, gid: 0 },
                }),
            ),
            (
                owner(1234, Some(1234)),
                Owner { uid: 0, gid: 0 },
                Ok(Owner {
                    uid: 1234,
                    gid: 1234,
                }),
            ),
        ];
        for (wanted, folder, want) in cases {
            assert_eq!(
                &resolve_owner(&with_owner(*wanted), *folder, passwd),
                want,
                "{wanted:?} {folder}"
            );
        }
        // A user whose primary group is root (gid 0) is refused too.
        assert_eq!(
            resolve_owner(&with_owner(owner(1234, None)), folder, |_| Some(0)),
            Err(OptionError::RootOwner(Owner { uid: 1234, gid: 0 }))
        );
        let err = resolve_owner(&spec("/s"), Owner { uid: 0, gid: 0 }, passwd).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source /s belongs to 0:0, host root, and a volume never stores files as uid or \
             gid 0: pass -o owner=UID:GID of an ordinary user"
        );
    }

    #[test]
    fn specs_serialise_with_the_owner_as_written() {
        let cases: &[(Option<OwnerSpec>, &str)] = &[
            (
                None,
                r#"{"source":"/s","uid":0,"gid":0,"access":"read-write"}"#,
            ),
            (
                owner(1234, None),
                r#"{"source":"/s","owner":"1234","uid":0,"gid":0,"access":"read-write"}"#,
            ),
            (
                owner(1234, Some(5)),
                r#"{"source":"/s","owner":"1234:5","uid":0,"gid":0,"access":"read-write"}"#,
            ),
        ];
        for (o, text) in cases {
            let spec = VolumeSpec {
                owner: *o,
                ..spec("/s")
            };
            assert_eq!(serde_json::to_string(&spec).unwrap(), *text);
            assert_eq!(serde_json::from_str::<VolumeSpec>(text).unwrap(), spec);
        }
        let bad = r#"{"source":"/s","owner":"bob","uid":0,"gid":0,"access":"read-write"}"#;
        assert!(serde_json::from_str::<VolumeSpec>(bad).is_err());
    }
}

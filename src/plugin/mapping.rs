//! How a mounted volume is mapped, at its mount point under the plugin's propagated mount:
//! an idmapped copy of its folder where the filesystem allows one, else asme's FUSE mapping.
//!
//! The plugin works in the engine's mount namespace (`asme plugin serve` enters it at start,
//! as the agent does), not in the one its container was given: there it sees exactly the
//! folders `-v` names, including filesystems mounted after the plugin started (a user's
//! share; a bind of host `/` would not show them where host mounts are private), and its
//! mounts outlive it. It attaches at the host side of its propagated mount, [`Volumes`],
//! which dockerd finds again as [`VOLUMES`]`/NAME`.
//!
//! - **idmap**: one user namespace per mapping, made once (at Create, or when the plugin
//!   starts) and kept, so a Mount costs the three mount syscalls; the kernel mount outlives
//!   the plugin.
//! - **fuse**, as root with passthrough: for a folder whose filesystem refuses idmapped
//!   mounts (FUSE, NFS) but that root may read, or a volume made with `-o mapping=fuse`.
//! - **fuse, as the share's user**: for a FUSE share mounted without `allow_other`, which
//!   only its user may enter (root and the engine get EACCES). The server mounts as root,
//!   then becomes that user (`asme mount --serve-as`).
//!
//! A FUSE server is a child of the plugin and dies with it: a container that runs over a
//! FUSE-served volume while the plugin is killed loses that mount (ENOTCONN) until it is
//! started again; the next Mount replaces the dead mount point.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use rustix::io::Errno;

use super::options::{self, Mapping, VolumeSpec};
use super::state::Volume;
use crate::fs;
use crate::fs::map::OwnerMap;
use crate::fs::mount::ServerOptions;
use crate::idmap::{IdMap, UserNamespace};
use crate::owner::Owner;
use crate::sys::{fs as sysfs, mount};

/// The plugin's `propagatedMount` inside its container: Mount answers `VOLUMES/NAME`, and
/// dockerd turns that into the host side of the propagated mount.
pub const VOLUMES: &str = "/mnt/volumes";

/// asme's own binary, the FUSE server: by its link, since after entering the engine's mount
/// namespace the plugin's rootfs is no longer `/`.
const EXE: &str = "/proc/self/exe";

/// The host side of the propagated mount (`DATA_ROOT/plugins/ID/propagated-mount`), where
/// the plugin, working in the engine's mount namespace, attaches volumes.
#[derive(Debug, Clone)]
pub struct Volumes(pub PathBuf);

impl Volumes {
    /// The folder a volume is attached at.
    pub fn point(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn detach(&self, name: &str) -> Result<()> {
        let point = self.point(name);
        mount::detach(&point).with_context(|| format!("detaching {}", point.display()))?;
        let _ = std::fs::remove_dir(&point);
        Ok(())
    }
}

/// How a volume is served, once mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Idmap,
    /// By asme's FUSE mapping, as root or as the share's user.
    Fuse {
        as_user: Option<Owner>,
    },
}

/// As `docker volume inspect` shows it (`Status.Mapping`).
impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Served::Idmap => f.write_str("idmap"),
            Served::Fuse { as_user: None } => f.write_str("fuse"),
            Served::Fuse {
                as_user: Some(user),
            } => write!(f, "fuse, served as {user}"),
        }
    }
}

/// Where volumes are attached, how each attached one is served, and the user namespaces of
/// the mappings in use, by their uid and gid maps.
pub struct Mappings {
    volumes: Volumes,
    served: Mutex<HashMap<String, Served>>,
    namespaces: Mutex<HashMap<(String, String), UserNamespace>>,
}

impl Mappings {
    pub fn new(volumes: Volumes) -> Mappings {
        Mappings {
            volumes,
            served: Mutex::default(),
            namespaces: Mutex::default(),
        }
    }

    /// How the volume `name` is served, if it is attached.
    pub fn served(&self, name: &str) -> Option<Served> {
        lock(&self.served).get(name).copied()
    }

    /// Maps `volume` at its mount point (kept if a live one is there already).
    pub fn attach(&self, name: &str, volume: &Volume) -> Result<Served> {
        let served = self.make(name, volume)?;
        lock(&self.served).insert(name.to_string(), served);
        Ok(served)
    }

    /// Detaches a volume's mount point (containers keep their own binds of it; a FUSE
    /// server exits when the last of them lets go) and removes it.
    pub fn detach(&self, name: &str) -> Result<()> {
        lock(&self.served).remove(name);
        self.volumes.detach(name)
    }

    /// Makes the user namespace of `volume`'s mapping now, so that its Mounts do not pay for
    /// it (about 8 ms, most of a Mount otherwise). Failing here is not fatal: Mount tries
    /// again and says why.
    pub fn prepare(&self, volume: &Volume) {
        let _ = self.with_namespace(volume, |_| Ok(()));
    }

    fn with_namespace<T>(
        &self,
        volume: &Volume,
        f: impl FnOnce(&UserNamespace) -> std::io::Result<T>,
    ) -> Result<std::io::Result<T>> {
        let uids = IdMap::for_owner(volume.spec.uid, volume.owner.uid)?;
        let gids = IdMap::for_owner(volume.spec.gid, volume.owner.gid)?;
        let key = (uids.to_string(), gids.to_string());
        let mut namespaces = lock(&self.namespaces);
        let userns = match namespaces.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(UserNamespace::new(&uids, &gids).context("creating the id mapping")?)
            }
        };
        Ok(f(userns))
    }

    fn make(&self, name: &str, volume: &Volume) -> Result<Served> {
        let point = self.volumes.point(name);
        if let Some(served) = already_attached(&point, volume)? {
            return Ok(served);
        }
        let spec = &volume.spec;
        let source = match open_source(&spec.source) {
            Ok(_) if spec.mapping == Mapping::Fuse => return fuse(&point, volume, None),
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return fuse(
                    &point,
                    volume,
                    Some(share_user(spec).unwrap_or(volume.owner)),
                );
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("opening the volume's folder {}", source_name(spec)));
            }
        };
        match self.with_namespace(volume, |userns| userns.idmapped_tree(source.as_fd()))? {
            Ok(tree) => {
                if spec.access == options::Access::ReadOnly {
                    mount::set_read_only(tree.as_fd()).context("making the volume read-only")?;
                }
                make_point(&point)?;
                mount::attach(tree.as_fd(), &point)
                    .with_context(|| format!("attaching at {}", point.display()))?;
                Ok(Served::Idmap)
            }
            Err(e) if refuses_idmap(&e) && spec.mapping != Mapping::Idmap => {
                fuse(&point, volume, None)
            }
            Err(e) => {
                Err(e).with_context(|| format!("an idmapped mount of {}", spec.source.display()))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mount point of a volume, as Mount answers it.
pub fn mount_point(name: &str) -> PathBuf {
    Path::new(VOLUMES).join(name)
}

/// The volume's host folder, opened as a handle (O_PATH), resolved inside `/`
/// (RESOLVE_IN_ROOT, no magic links: a symlink in the user's path cannot lead through
/// `/proc`); stat'ed, so that a share only its user may enter says EACCES here.
pub fn open_source(source: &Path) -> std::io::Result<OwnedFd> {
    let root = sysfs::open_folder_path(Path::new("/"))?;
    let fd = sysfs::open_folder_in_root(root.as_fd(), source)?;
    sysfs::stat(fd.as_fd())?;
    Ok(fd)
}

/// The user who mounted the FUSE share that holds `spec`'s folder (FUSE's `user_id` and
/// `group_id`), if it is on one.
pub fn share_user(spec: &VolumeSpec) -> Option<Owner> {
    let path = &spec.source;
    let share = fs::mount::mounts()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && path.starts_with(&m.target))
        .max_by_key(|m| m.target.as_os_str().len())?;
    let option = |key: &str| {
        share
            .super_options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.parse::<u32>().ok())
    };
    Some(Owner {
        uid: option("user_id=")?,
        gid: option("group_id=")?,
    })
}

fn source_name(spec: &VolumeSpec) -> String {
    spec.source.display().to_string()
}

/// EINVAL (or EOPNOTSUPP) from mount_setattr: the filesystem does not do idmapped mounts.
fn refuses_idmap(e: &std::io::Error) -> bool {
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    matches!(errno, Some(Errno::INVAL) | Some(Errno::OPNOTSUPP))
}

/// What is at the mount point already: a live mount from before the plugin restarted (a
/// volume's mapping never changes, so it is kept), or a dead FUSE mount whose server died
/// with the plugin (detached, to be made again).
fn already_attached(point: &Path, volume: &Volume) -> Result<Option<Served>> {
    if !mount::is_mount_root(point).unwrap_or(false) {
        return Ok(None);
    }
    match rustix::fs::stat(point) {
        Err(e) if fs::check::server_gone(e) => {
            mount::detach(point).with_context(|| format!("detaching {}", point.display()))?;
            Ok(None)
        }
        _ => {
            let fuse = fs::mount::mount_at(point).is_some_and(|m| m.fstype == fs::mount::FSTYPE);
            Ok(Some(if fuse {
                Served::Fuse {
                    as_user: share_user(&volume.spec),
                }
            } else {
                Served::Idmap
            }))
        }
    }
}

fn make_point(point: &Path) -> Result<()> {
    std::fs::create_dir_all(point).with_context(|| format!("creating {}", point.display()))
}

/// Serves `volume` at `point` with asme's FUSE mapping: container uid and gid shown for the
/// owner's files, writes stored as the owner. The server runs until the mount goes.
fn fuse(point: &Path, volume: &Volume, as_user: Option<Owner>) -> Result<Served> {
    let spec = &volume.spec;
    let map = OwnerMap::single((volume.owner.uid, volume.owner.gid), (spec.uid, spec.gid));
    let how = ServerOptions {
        read_only: spec.access == options::Access::ReadOnly,
        // A database's chown to its service user stays the owner's on disk.
        record_owners: true,
        serve_as: as_user,
        enter: None,
    };
    make_point(point)?;
    match fs::mount::spawn_server(Path::new(EXE), &map, &spec.source, point, how) {
        Ok(mut server) => {
            // Reaped when it exits (the mount gone), so no zombie is left in the plugin.
            std::thread::spawn(move || server.wait());
            Ok(Served::Fuse { as_user })
        }
        Err(e) => {
            // A server that mounted, then failed as the user, leaves its mount to root.
            if mount::is_mount_root(point).unwrap_or(false) {
                let _ = mount::detach(point);
            }
            let _ = std::fs::remove_dir(point);
            Err(e.context(format!(
                "the kernel refuses an idmapped mount of {}, and asme's FUSE mapping failed",
                source_name(spec)
            )))
        }
    }
}

//! What each request of the volume protocol does: volumes kept in `state`, and for a mounted
//! volume one idmapped copy of its host folder attached under the plugin's propagated mount,
//! where dockerd finds it.
//!
//! The plugin runs in its own mount namespace, where host `/` is bound at [`HOST`] (open_tree
//! clones only mounts of the caller's own namespace, so `/proc/PID/root` would not do). A
//! volume's folder is resolved there as if [`HOST`] were `/` (RESOLVE_IN_ROOT: a symlink in
//! the user's path cannot lead into the plugin's own files). The mapping follows
//! the idmap strategy's rules (`idmap::IdMap::for_owner`): the volume's container uid and gid
//! are stored as the owner, other ids as themselves, nothing as host root.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use super::http::Answer;
use super::options::{self, VolumeSpec};
use super::protocol::{
    ActivateResponse, CapabilitiesResponse, Done, ErrorResponse, GetResponse, ListResponse,
    MountRequest, MountpointResponse, Request, VolumeInfo, rfc3339, route,
};
use super::state::{MountAction, SharedState, State, UnmountAction, Volume};
use crate::identity::PasswdFile;
use crate::idmap::{IdMap, UserNamespace};
use crate::owner::Owner;
use crate::sys::{fs as sysfs, mount};

/// Where the plugin attaches mounted volumes: its `propagatedMount`, which dockerd sees.
pub const VOLUMES: &str = "/mnt/volumes";

/// The host's root as the plugin sees it: a recursive bind of host `/`, with slave
/// propagation so that mounts made on the host later (a user's FUSE share) show too.
pub const HOST: &str = "/host";

/// The driver: its volumes, behind one lock per request.
pub struct Driver {
    state: SharedState,
}

impl Driver {
    /// Loads the volumes kept in `state_dir`, and attaches again those that dockerd still
    /// holds mounted (a plugin that was killed and restarted lost its mounts with its
    /// namespace).
    pub fn start(state_dir: &Path) -> Result<Driver> {
        let state = State::load(state_dir)?;
        for (name, volume) in state.list() {
            if volume.is_mounted()
                && let Err(e) = attach(name, volume)
            {
                eprintln!("asme plugin: attaching {name} again: {e:#}");
            }
        }
        Ok(Driver {
            state: SharedState::new(state),
        })
    }

    /// Answers one request: `path` is the endpoint, `body` its JSON.
    pub fn answer(&self, path: &str, body: &[u8]) -> Answer {
        let Some(endpoint) = route(path) else {
            return reply(
                404,
                &ErrorResponse::new(format!("no such endpoint: {path}")),
            );
        };
        let result = Request::decode(endpoint, body)
            .map_err(anyhow::Error::from)
            .and_then(|request| self.handle(request));
        match result {
            Ok(answer) => answer,
            Err(e) => reply(200, &ErrorResponse::from_error(&e)),
        }
    }

    fn handle(&self, request: Request) -> Result<Answer> {
        Ok(match request {
            Request::Activate => reply(200, &ActivateResponse::volume_driver()),
            Request::Capabilities => reply(200, &CapabilitiesResponse::local()),
            Request::Create(create) => {
                let spec = VolumeSpec::parse(&create.opts)?;
                let owner = check_source(&spec)?;
                self.state.lock().create(&create.name, spec, owner)?;
                reply(200, &Done::default())
            }
            Request::Remove(name) => {
                // The folder's data is never touched: only what the driver knows goes.
                self.state.lock().remove(&name.name)?;
                reply(200, &Done::default())
            }
            Request::Mount(mount) => self.mount(&mount)?,
            Request::Unmount(unmount) => {
                let mut state = self.state.lock();
                if state.unmount(&unmount.name, &unmount.id)? == UnmountAction::LastGone {
                    detach(&unmount.name)?;
                }
                reply(200, &Done::default())
            }
            Request::Path(name) => {
                let state = self.state.lock();
                let volume = known(&state, &name.name)?;
                let point = mounted_at(&name.name, volume);
                reply(200, &MountpointResponse::new(point))
            }
            Request::Get(name) => {
                let state = self.state.lock();
                let volume = known(&state, &name.name)?;
                reply(200, &GetResponse::new(info(&name.name, volume)))
            }
            Request::List => {
                let state = self.state.lock();
                let volumes = state.list().map(|(name, v)| info(name, v)).collect();
                reply(200, &ListResponse::new(volumes))
            }
        })
    }

    /// Mount: the first ID attaches the mapping, later ones share it. The ID is recorded
    /// first and forgotten again if attaching fails, so the state never claims a mapping
    /// that is not there.
    fn mount(&self, request: &MountRequest) -> Result<Answer> {
        let mut state = self.state.lock();
        if state.mount(&request.name, &request.id)? == MountAction::FirstMount {
            let volume = known(&state, &request.name)?.clone();
            if let Err(e) = attach(&request.name, &volume) {
                let _ = state.unmount(&request.name, &request.id);
                return Err(e);
            }
        }
        Ok(reply(
            200,
            &MountpointResponse::new(mount_point(&request.name).to_string_lossy()),
        ))
    }
}

fn reply(status: u16, body: &impl Serialize) -> Answer {
    Answer {
        status,
        body: serde_json::to_vec(body).expect("plain data"),
    }
}

fn known<'s>(state: &'s State, name: &str) -> Result<&'s Volume> {
    state
        .get(name)
        .ok_or_else(|| anyhow!("no such volume: {name}"))
}

fn info(name: &str, volume: &Volume) -> VolumeInfo {
    VolumeInfo {
        name: name.to_string(),
        mountpoint: mounted_at(name, volume),
        created_at: Some(rfc3339(volume.created_at)),
        status: Default::default(),
    }
}

fn mount_point(name: &str) -> PathBuf {
    Path::new(VOLUMES).join(name)
}

fn mounted_at(name: &str, volume: &Volume) -> String {
    if volume.is_mounted() {
        mount_point(name).to_string_lossy().into_owned()
    } else {
        String::new()
    }
}

/// The volume's host folder, opened as a handle (O_PATH) through the host's root.
fn open_source(source: &Path) -> Result<OwnedFd> {
    let root = sysfs::open_folder_path(Path::new(HOST))
        .with_context(|| format!("opening the host's root ({HOST})"))?;
    sysfs::open_folder_in_root(root.as_fd(), source)
        .with_context(|| format!("opening the volume's folder {}", source.display()))
}

/// At Create: the folder must exist and be a folder; whose its files become is resolved
/// now (`-o owner`, else the folder's owner), never host root.
fn check_source(spec: &VolumeSpec) -> Result<Owner> {
    let fd = open_source(&spec.source)?;
    let inode = sysfs::stat(fd.as_fd())?;
    let folder = Owner {
        uid: inode.uid,
        gid: inode.gid,
    };
    let host_passwd = std::fs::read_to_string(Path::new(HOST).join("etc/passwd"));
    let primary_gid = |uid| {
        let passwd = PasswdFile::parse(host_passwd.as_deref().unwrap_or_default());
        passwd.by_uid(uid).map(|e| e.gid)
    };
    Ok(options::resolve_owner(spec, folder, primary_gid)?)
}

/// Attaches the volume's idmapped folder at its mount point.
fn attach(name: &str, volume: &Volume) -> Result<()> {
    let spec = &volume.spec;
    let uids = IdMap::for_owner(spec.uid, volume.owner.uid)?;
    let gids = IdMap::for_owner(spec.gid, volume.owner.gid)?;
    let source = open_source(&spec.source)?;
    let userns = UserNamespace::new(&uids, &gids).context("creating the id mapping")?;
    let tree = userns.idmapped_tree(source.as_fd()).with_context(|| {
        format!(
            "the kernel refuses an idmapped mount of {}",
            spec.source.display()
        )
    })?;
    if spec.access == options::Access::ReadOnly {
        mount::set_read_only(tree.as_fd()).context("making the volume read-only")?;
    }
    let point = mount_point(name);
    if mount::is_mount_root(&point).unwrap_or(false) {
        // Still there from before the plugin restarted: a volume's mapping never changes.
        return Ok(());
    }
    std::fs::create_dir_all(&point).with_context(|| format!("creating {}", point.display()))?;
    mount::attach(tree.as_fd(), &point).with_context(|| format!("attaching at {}", point.display()))
}

/// Detaches a volume's mount point (containers keep their own binds of it) and removes it.
fn detach(name: &str) -> Result<()> {
    let point = mount_point(name);
    mount::detach(&point).with_context(|| format!("detaching {}", point.display()))?;
    let _ = std::fs::remove_dir(&point);
    Ok(())
}

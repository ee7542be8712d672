//! What each request of the volume protocol does: volumes kept in `state`, and for a mounted
//! volume one mapping of its host folder (`mapping`) under the plugin's propagated mount,
//! where dockerd finds it.
//!
//! The plugin works in the engine's mount namespace (see `mapping`). The mapping follows the idmap strategy's rules (`idmap::IdMap::for_owner`): the volume's
//! container uid and gid are stored as the owner, other ids as themselves, nothing as host
//! root.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use super::http::Answer;
use super::mapping::{self, Mappings, Served, Volumes, mount_point};
use super::options::{self, VolumeSpec};
use super::protocol::{
    ActivateResponse, CapabilitiesResponse, Done, ErrorResponse, GetResponse, ListResponse,
    MountRequest, MountpointResponse, Request, VolumeInfo, rfc3339, route,
};
use super::state::{MountAction, SharedState, State, UnmountAction, Volume};
use crate::owner::Owner;
use crate::sys::fs as sysfs;

/// The driver: its volumes, behind one lock per request, and their mappings.
pub struct Driver {
    state: SharedState,
    mappings: Mappings,
}

impl Driver {
    /// Loads the volumes kept in `state_dir`, and attaches again those that dockerd still
    /// holds mounted (a plugin that was killed and restarted lost its mounts with its
    /// namespace).
    pub fn start(state_dir: &Path, volumes: Volumes) -> Result<Driver> {
        let state = State::load(state_dir)?;
        let mappings = Mappings::new(volumes);
        for (name, volume) in state.list() {
            mappings.prepare(volume);
            if volume.is_mounted()
                && let Err(e) = mappings.attach(name, volume)
            {
                eprintln!("asme plugin: attaching {name} again: {e:#}");
            }
        }
        Ok(Driver {
            state: SharedState::new(state),
            mappings,
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
                let mut state = self.state.lock();
                state.create(&create.name, spec, owner)?;
                if let Some(volume) = state.get(&create.name) {
                    self.mappings.prepare(volume);
                }
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
                    self.mappings.detach(&unmount.name)?;
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
                let served = self.mappings.served(&name.name);
                reply(200, &GetResponse::new(info(&name.name, volume, served)))
            }
            Request::List => {
                let state = self.state.lock();
                let volumes = state
                    .list()
                    .map(|(name, v)| info(name, v, self.mappings.served(name)))
                    .collect();
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
            if let Err(e) = self.mappings.attach(&request.name, &volume) {
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

/// What `docker volume inspect` shows: the folder, whose its files become, and while it is
/// mounted how it is served.
fn info(name: &str, volume: &Volume, served: Option<Served>) -> VolumeInfo {
    let mut status = std::collections::BTreeMap::new();
    let source = volume.spec.source.to_string_lossy().into_owned();
    status.insert("Source".to_string(), source.into());
    status.insert("Owner".to_string(), volume.owner.to_string().into());
    if let Some(served) = served {
        status.insert("Mapping".to_string(), served.to_string().into());
    }
    VolumeInfo {
        name: name.to_string(),
        mountpoint: mounted_at(name, volume),
        created_at: Some(rfc3339(volume.created_at)),
        status: Some(status),
    }
}

fn mounted_at(name: &str, volume: &Volume) -> String {
    if volume.is_mounted() {
        mount_point(name).to_string_lossy().into_owned()
    } else {
        String::new()
    }
}

/// At Create: the folder must exist and be a folder; whose its files become is resolved
/// now (`-o owner`, else the folder's owner, or the user of the share it is on where only
/// they may enter it), never host root.
fn check_source(spec: &VolumeSpec) -> Result<Owner> {
    let folder = match mapping::open_source(&spec.source) {
        Ok(fd) => {
            let inode = sysfs::stat(fd.as_fd())?;
            Owner {
                uid: inode.uid,
                gid: inode.gid,
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => mapping::share_user(spec)
            .ok_or(e)
            .with_context(|| format!("opening the volume's folder {}", spec.source.display()))?,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the volume's folder {}", spec.source.display()));
        }
    };
    let passwd = crate::owner::host_passwd();
    let primary_gid = |uid| passwd.by_uid(uid).map(|e| e.gid);
    Ok(options::resolve_owner(spec, folder, primary_gid)?)
}

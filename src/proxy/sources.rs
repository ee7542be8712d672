//! The rewrite's view of the world, as the user who runs the proxy: bind sources looked up
//! with the user's own rights, missing ones created as the user, and the container's user
//! resolved against the image (its probe, cached per image as for `asme run`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::rewrite::{Source, Sources};
use crate::cache::Cache;
use crate::engine::Engine;
use crate::owner::Owner;

pub struct UserSources {
    pub owner: Owner,
    pub engine: Engine,
    /// asme's own binary, for the image probe.
    pub exe: PathBuf,
    pub cache: Cache,
    /// A userns-remap daemon's subordinate base: container ids are stored shifted by it.
    pub remap: Option<(u32, u32)>,
}

impl Sources for UserSources {
    fn classify(&self, path: &str) -> Source {
        // Followed like docker follows a bind source's symlinks: but as the user.
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() && meta.uid() == self.owner.uid => Source::OwnFolder,
            Ok(_) => Source::Other,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Source::Missing,
            Err(e) => Source::Unreachable(e.to_string()),
        }
    }

    fn create(&self, path: &str) -> Result<(), String> {
        std::fs::create_dir_all(path).map_err(|e| format!("asme proxy: creating {path}: {e}"))
    }

    fn container(&self, image: &str, user: &str) -> Result<((u32, u32), bool), String> {
        let config = self
            .engine
            .inspect_image(image)
            .map_err(|e| format!("{e:#}"))?
            // The engine will say so in its own words.
            .ok_or_else(|| format!("No such image: {image}"))?;
        let facts = self
            .cache
            .image_facts(&config.id, || self.engine.probe(&config, &self.exe))
            .map_err(|e| format!("{e:#}"))?;
        let user = if user.is_empty() { &config.user } else { user };
        let (uid, gid) = facts.ids_of(user)?;
        let changes_users = facts.program.as_ref().is_some_and(|p| p.changes_users);
        let (base_uid, base_gid) = self.remap.unwrap_or((0, 0));
        let shifted = |id: u32, base: u32| {
            id.checked_add(base)
                .ok_or_else(|| format!("container id {id} past the engine's range"))
        };
        Ok((
            (shifted(uid, base_uid)?, shifted(gid, base_gid)?),
            changes_users,
        ))
    }
}

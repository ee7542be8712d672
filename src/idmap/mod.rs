//! Idmapped mounts: mapping specs (`spec`, pure) and the kernel sequence that makes a folder
//! appear, to the container, owned by its user while writes land as the owner.
//!
//! The sequence needs CAP_SYS_ADMIN in the host's user and mount namespaces; `agent` runs it.
//! Which bind mounts get it and how the docker argv changes is `run`'s business.

pub mod spec;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::mount;
pub use spec::{IdMap, IdMapError};

/// A user namespace that carries one uid and one gid mapping, for any number of mounts.
pub struct UserNamespace(OwnedFd);

impl UserNamespace {
    pub fn new(uids: &IdMap, gids: &IdMap) -> io::Result<UserNamespace> {
        mount::user_namespace(&uids.to_string(), &gids.to_string()).map(UserNamespace)
    }

    /// A detached, idmapped copy of the mount tree at `source` (with the mounts nested in
    /// it), ready to attach somewhere.
    ///
    /// # Errors
    /// EINVAL when `source`'s filesystem refuses idmapped mounts.
    pub fn idmapped_tree(&self, source: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let tree = mount::clone_tree(source)?;
        mount::set_idmap(tree.as_fd(), self.0.as_fd())?;
        Ok(tree)
    }
}

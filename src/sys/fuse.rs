//! FUSE passthrough's backing files, by id.
//!
//! The server registers a file with `FUSE_DEV_IOC_BACKING_OPEN` on its `/dev/fuse`
//! descriptor and names the id in OPEN and CREATE replies; the kernel then reads and writes
//! that file itself. asme keeps the ids itself (`BackingFile`) because replies go out over
//! two transports: fuser's `/dev/fuse` loop, which wants its own `BackingId` wrapper for the
//! one reply, and asme's io_uring queues (`sys::uring`), which want the number.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// A registered backing file, closed (`FUSE_DEV_IOC_BACKING_CLOSE`) when dropped.
#[derive(Debug)]
pub struct BackingFile {
    dev: Arc<OwnedFd>,
    id: u32,
}

nix::ioctl_write_ptr!(backing_close_ioctl, 229, 2, u32);

impl BackingFile {
    /// Registers `file` (a data descriptor of SOURCE) on the FUSE connection `dev`.
    pub fn open(dev: &Arc<OwnedFd>, file: BorrowedFd<'_>) -> std::io::Result<BackingFile> {
        let id = fuser::BackingId::create_raw(dev.as_fd(), file)?;
        Ok(BackingFile {
            dev: dev.clone(),
            id,
        })
    }

    /// The id the kernel knows it by (what a reply names).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// fuser's wrapper of this id for one OPEN reply; hand it back with `BackingId::into_raw`
    /// once the reply is sent (dropped, the wrapper would close the id under us).
    pub fn lend_to_open(&self, reply: &fuser::ReplyOpen) -> fuser::BackingId {
        // SAFETY: the id is open and belongs to this session (registered on its device), and
        // it stays open while the wrapper lives: the caller gives the wrapper up with
        // `into_raw` right after the reply, and only this `BackingFile`'s drop closes the id.
        unsafe { reply.wrap_backing(self.id) }
    }

    /// `lend_to_open` for a CREATE reply.
    pub fn lend_to_create(&self, reply: &fuser::ReplyCreate) -> fuser::BackingId {
        // SAFETY: as in `lend_to_open`.
        unsafe { reply.wrap_backing(self.id) }
    }
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        // SAFETY: the ioctl reads one u32 through the pointer, which is valid for the call;
        // the descriptor is the device the id was registered on. A failure (the connection
        // already gone) leaves nothing to undo.
        let _ = unsafe { backing_close_ioctl(self.dev.as_raw_fd(), &self.id) };
    }
}

/// Whether the FUSE connection of `dev` (a `/dev/fuse` descriptor) still stands: the kernel
/// reports POLLERR once it is unmounted or aborted.
pub fn connected(dev: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(dev, PollFlags::empty())];
    loop {
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => {
                return !fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(PollFlags::POLLERR));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

//! Descriptors handed out as numbers and taken back later: a FUSE server gives the kernel an
//! open file's descriptor number as its handle, and the kernel names it in every later
//! request until RELEASE.

use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// Gives up ownership of `fd`: it stays open, known only by the returned number, until
/// [`close_handed_out`].
pub fn hand_out(fd: OwnedFd) -> RawFd {
    fd.into_raw_fd()
}

/// The descriptor behind a number from [`hand_out`].
///
/// The caller names only numbers it handed out and has not closed: a FUSE server gets them
/// back from the kernel, which sends a handle only between the OPEN or CREATE that made it
/// and the RELEASE that ends it.
pub fn handed_out(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: by this function's contract `raw` came from `hand_out` and is not yet closed
    // (the kernel sends a handle only until its RELEASE, the last request that names it).
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// Closes a number from [`hand_out`], once (at RELEASE, or when an open is abandoned).
pub fn close_handed_out(raw: RawFd) {
    // SAFETY: by this function's contract the descriptor is ours and is closed only here;
    // nothing uses the number after this.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
}

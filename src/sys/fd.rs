//! Descriptors handed out as bare numbers, and taken back.
//!
//! FUSE lets a server name each open file with a 64-bit handle of its own choosing, which the
//! kernel echoes in every later request on that file until RELEASE, the last one (fuse(4);
//! libfuse's passthrough_ll does the same). `asme mount` uses the descriptor number itself, so
//! a read or write needs no table lookup: `OwnedFd::into_raw_fd` gives ownership up for the
//! number, and the functions here turn it back into a descriptor. What the type system cannot
//! see (that the number is still open and still ours) is the caller's promise, stated as each
//! function's contract; the `unsafe` stays here.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The open descriptor `raw`, borrowed.
///
/// Contract: `raw` is a descriptor this process gave up with `into_raw_fd` and has not yet
/// passed to `close_raw_fd`, and it is not closed while the borrow is in use. For FUSE file
/// handles the kernel keeps this: it sends only handles the server returned from open or
/// create, and RELEASE (which closes) comes after every other request on the handle.
pub fn borrow_raw_fd(raw: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the caller keeps the contract above: `raw` is open (not -1) and stays open for
    // as long as the borrow is used.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

/// Takes ownership of `raw` back and closes it.
///
/// Contract: `raw` is a descriptor this process gave up with `into_raw_fd`, and this is the
/// one call that takes it back: nothing uses the number afterwards (for a FUSE file handle,
/// at RELEASE).
pub fn close_raw_fd(raw: RawFd) {
    // SAFETY: by the contract above the descriptor is ours, open, and owned by nobody else,
    // so closing it here cannot close a descriptor another owner still relies on.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
}

/// Takes ownership of descriptor `raw`, inherited from the process that started us (systemd's
/// socket activation passes listening sockets from fd 3 on), after checking it is open.
///
/// Contract: nothing else in this process owns `raw` (true of inherited descriptors that no
/// code has wrapped yet); call it once per descriptor.
pub fn take_inherited(raw: RawFd) -> std::io::Result<OwnedFd> {
    rustix::io::fcntl_getfd(borrow_raw_fd(raw))?;
    // SAFETY: the descriptor is open (checked just above) and, by the contract, owned by
    // nobody else in this process, so this becomes its one owner.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

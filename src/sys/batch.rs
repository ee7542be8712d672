//! Batches of the walker's cheap calls through io_uring: a batch of O_PATH opens, or of
//! closes, costs one `io_uring_enter` where it would otherwise cost one syscall per entry.
//!
//! The calls are the same as [`super::fs::open_entry`] and a descriptor's close, so what a
//! walk may rely on does not change: an entry is opened O_PATH|O_NOFOLLOW relative to its
//! folder's descriptor (never followed, never opened for I/O), and is examined and changed
//! through that descriptor. Where io_uring is missing or refused (an old kernel,
//! `kernel.io_uring_disabled`, a seccomp profile such as Docker's default), a [`Batch`]
//! makes the plain syscalls instead.
//!
//! An O_PATH open of a cached name completes inline, in the submitting thread: no io-wq
//! worker is involved (on Linux 6.18, 0 of 99,900 opens were punted to a worker). A name
//! not in the dentry cache is opened by a worker instead, which is slower but as correct.

use std::cell::Cell;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use io_uring::{IoUring, opcode, types};

/// Opens and closes per `io_uring_enter` at most (the ring's size).
pub const SIZE: usize = 64;

/// One thread's batches: a ring, or the plain syscalls.
pub struct Batch {
    ring: Option<IoUring>,
}

impl Batch {
    /// A batch with a ring of [`SIZE`] entries, or without one where io_uring is unavailable.
    pub fn with_ring() -> Batch {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(SIZE as u32)
            // Kernels before 6.1 refuse the flags (EINVAL): a plain ring works there too.
            .or_else(|_| IoUring::new(SIZE as u32))
            .ok();
        Batch { ring }
    }

    /// A batch that makes the plain syscalls (the fallback, and for tests).
    pub fn without_ring() -> Batch {
        Batch { ring: None }
    }

    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Opens each of `names` in `dir` as [`super::fs::open_entry`] does (O_PATH|O_NOFOLLOW|
    /// O_CLOEXEC) and appends the results to `out`, in the order of `names`.
    pub fn open_entries(
        &mut self,
        dir: BorrowedFd<'_>,
        names: &[&CStr],
        out: &mut Vec<io::Result<OwnedFd>>,
    ) {
        let first = out.len();
        out.extend(
            names
                .iter()
                .map(|_| Err(io::Error::from_raw_os_error(libc::EINPROGRESS))),
        );
        for (start, chunk) in (0..).step_by(SIZE).zip(names.chunks(SIZE)) {
            let results = &mut out[first + start..first + start + chunk.len()];
            let mut done = [false; SIZE];
            if let Some(ring) = &mut self.ring {
                let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                let sqes = chunk.iter().enumerate().map(|(i, name)| {
                    opcode::OpenAt::new(types::Fd(dir.as_raw_fd()), name.as_ptr())
                        .flags(flags)
                        .build()
                        .user_data(i as u64)
                });
                // SAFETY: each request reads one name of `chunk`, borrowed for this whole
                // call, and `run` returns only once every request pushed has completed (or the
                // ring is given up, and then the kernel has already copied the names: an open
                // copies its path when it is submitted, in io_openat_prep). The descriptor
                // `dir` is borrowed for the call as well.
                let ok = unsafe {
                    run(ring, sqes, |i, res| {
                        results[i] = if res < 0 {
                            Err(io::Error::from_raw_os_error(-res))
                        } else {
                            // SAFETY: a successful open's result is a new descriptor, which
                            // nothing else owns.
                            Ok(OwnedFd::from_raw_fd(res))
                        };
                        done[i] = true;
                    })
                };
                if !ok {
                    self.ring = None;
                }
            }
            // Whatever the ring did not do (no ring, or it failed): the plain syscall.
            for ((result, name), done) in results.iter_mut().zip(chunk).zip(done) {
                if !done {
                    *result = super::fs::open_entry(dir, name);
                }
            }
        }
    }

    /// Closes `fds` (emptying it); errors are ignored, as a dropped descriptor's are.
    pub fn close_all(&mut self, fds: &mut Vec<OwnedFd>) {
        let Some(ring) = &mut self.ring else {
            fds.clear();
            return;
        };
        while !fds.is_empty() {
            let chunk = fds.len().min(SIZE);
            let raw: Vec<i32> = fds.drain(..chunk).map(IntoRawFd::into_raw_fd).collect();
            let sqes = raw
                .iter()
                .map(|&fd| opcode::Close::new(types::Fd(fd)).build().user_data(0));
            // SAFETY: a close reads no memory of ours. Each number was given up by its
            // OwnedFd just above, so the ring's close is its one close. Should the ring fail
            // part-way, the ones not known to be closed are left open (a leak) rather than
            // closed again, which could close a number reused by then.
            if !unsafe { run(ring, sqes, |_, _| {}) } {
                self.ring = None;
                fds.clear();
                return;
            }
        }
    }
}

/// Pushes `sqes` (at most [`SIZE`]), submits them and waits for all their completions,
/// calling `done(user_data, result)` for each. False if the ring failed: then some requests
/// may not have completed, and the ring must not be used again (requests left in its
/// submission queue must never be submitted).
///
/// # Safety
/// Whatever memory the requests point to must stay valid until this returns.
unsafe fn run(
    ring: &mut IoUring,
    sqes: impl Iterator<Item = io_uring::squeue::Entry>,
    mut done: impl FnMut(usize, i32),
) -> bool {
    let mut pushed = 0;
    {
        let mut sq = ring.submission();
        for sqe in sqes {
            // SAFETY: the caller keeps the memory the request points to valid until we return,
            // and we return only once it has completed (or the ring is abandoned).
            if unsafe { sq.push(&sqe) }.is_err() {
                return false; // more than SIZE: a bug of ours; nothing has been submitted
            }
            pushed += 1;
        }
    }
    let mut reaped = 0;
    while reaped < pushed {
        match ring.submit_and_wait(pushed - reaped) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(_) => return false,
        }
        for cqe in ring.completion() {
            done(cqe.user_data() as usize, cqe.result());
            reaped += 1;
        }
    }
    true
}

thread_local! {
    /// This thread's batch; None until first used, or while in use.
    static THREAD_BATCH: Cell<Option<Batch>> = const { Cell::new(None) };
    static TRIED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's batch (a ring made on first use and kept). A ring may only be
/// used by the thread that made it (it is set up single-issuer), hence one per thread.
pub fn with_thread_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    let mut batch = THREAD_BATCH.take().unwrap_or_else(|| {
        if TRIED.replace(true) {
            // In use further up this thread's stack, or io_uring was unavailable.
            Batch::without_ring()
        } else {
            Batch::with_ring()
        }
    });
    let result = f(&mut batch);
    if batch.has_ring() {
        THREAD_BATCH.set(Some(batch));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsFd;
    use std::path::PathBuf;

    /// A fresh folder holding a file, a symlink out of it, a fifo and a subfolder.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!("asme-uring-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("file"), b"x").unwrap();
            std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
            rustix::fs::mkfifoat(rustix::fs::CWD, dir.join("fifo"), rustix::fs::Mode::RUSR)
                .unwrap();
            std::fs::create_dir(dir.join("sub")).unwrap();
            Tree(dir)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Opens `names` in `tree` through `batch` and says what each result is: the inode's
    /// (kind, ino) or the error number.
    fn open(batch: &mut Batch, tree: &Tree, names: &[CString]) -> Vec<Result<(u32, u64), i32>> {
        let dir = super::super::fs::open_top(&tree.0).unwrap();
        let names: Vec<&CStr> = names.iter().map(CString::as_c_str).collect();
        let mut out = Vec::new();
        batch.open_entries(dir.as_fd(), &names, &mut out);
        assert_eq!(out.len(), names.len());
        let seen = out
            .iter()
            .map(|r| match r {
                Ok(fd) => {
                    let st = rustix::fs::fstat(fd).unwrap();
                    Ok((st.st_mode & libc::S_IFMT, st.st_ino))
                }
                Err(e) => Err(e.raw_os_error().unwrap()),
            })
            .collect();
        let mut fds: Vec<OwnedFd> = out.into_iter().filter_map(Result::ok).collect();
        batch.close_all(&mut fds);
        assert!(fds.is_empty());
        seen
    }

    fn names(list: &[&str]) -> Vec<CString> {
        list.iter().map(|n| CString::new(*n).unwrap()).collect()
    }

    #[test]
    fn opens_each_entry_itself_in_order_with_or_without_a_ring() {
        let tree = Tree::new("kinds");
        let list = names(&["file", "link", "missing", "fifo", "sub", "file"]);
        let ino = |n: &str| std::fs::symlink_metadata(tree.0.join(n)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let want = vec![
            Ok((libc::S_IFREG, ino("file").ino())),
            // The link itself, not /etc/passwd.
            Ok((libc::S_IFLNK, ino("link").ino())),
            Err(libc::ENOENT),
            // Opened O_PATH: no reader needed, nothing blocks.
            Ok((libc::S_IFIFO, ino("fifo").ino())),
            Ok((libc::S_IFDIR, ino("sub").ino())),
            Ok((libc::S_IFREG, ino("file").ino())),
        ];
        assert_eq!(open(&mut Batch::without_ring(), &tree, &list), want);
        let mut batch = Batch::with_ring();
        let had_ring = batch.has_ring();
        assert_eq!(open(&mut batch, &tree, &list), want);
        // A ring that was there (io_uring may be unavailable here) did not fail on the way.
        assert_eq!(batch.has_ring(), had_ring);
    }

    #[test]
    fn more_names_than_a_ring_holds_are_done_in_rounds() {
        let tree = Tree::new("many");
        let count = SIZE * 2 + 5;
        for i in 0..count {
            std::fs::write(tree.0.join(format!("f{i}")), b"").unwrap();
        }
        let list: Vec<CString> = (0..count)
            .map(|i| CString::new(format!("f{i}")).unwrap())
            .collect();
        use std::os::unix::fs::MetadataExt;
        let want: Vec<_> = (0..count)
            .map(|i| {
                let ino = std::fs::metadata(tree.0.join(format!("f{i}")))
                    .unwrap()
                    .ino();
                Ok((libc::S_IFREG, ino))
            })
            .collect();
        for mut batch in [Batch::with_ring(), Batch::without_ring()] {
            assert_eq!(open(&mut batch, &tree, &list), want);
        }
    }

    #[test]
    fn a_thread_batch_in_use_further_up_gives_a_plain_one() {
        let inner = with_thread_batch(|outer| {
            let _ = outer.has_ring();
            with_thread_batch(|inner| inner.has_ring())
        });
        assert!(!inner);
    }
}

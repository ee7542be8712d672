//! FUSE over io_uring (Linux 6.14+): one queue of the kernel's request ring.
//!
//! With `enable_uring` on in the fuse module and FUSE_OVER_IO_URING agreed at INIT, the
//! server may register, for every CPU, entries of two buffers each (a header of the request's
//! in/out header, the operation's own header and the ring's bookkeeping; and a payload) with
//! `IORING_OP_URING_CMD` on its `/dev/fuse` descriptor. Once every CPU's queue holds one,
//! the kernel puts each request into an entry of the requester's CPU and completes its
//! command; the server answers in the same buffers and, in one submission, commits the reply
//! and fetches the next request (COMMIT_AND_FETCH). A request and its reply cost no syscall
//! of their own, and the requester's CPU serves it. See the kernel's
//! Documentation/filesystems/fuse-io-uring.rst and include/uapi/linux/fuse.h.
//!
//! The buffers are handed to the kernel by address and live as long as the process: the
//! kernel may copy a request into them until the connection ends, which a queue's owner
//! cannot observe, so they are leaked, never freed (a few pages per entry in use).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in/out header, op header, `fuse_uring_ent_in_out`.
const IN_OUT: usize = 0;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const HEADER_LEN: usize = 256 + 32;
/// `fuse_in_header` is 40 bytes; `fuse_out_header` 16.
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;

/// Whether the fuse module lets servers use io_uring (`enable_uring`, root's switch).
pub fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y" || v.trim() == "1")
}

/// How many queues the kernel expects: one per possible CPU (`num_possible_cpus`), numbered
/// as the CPUs are.
pub fn queue_count() -> io::Result<u16> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = text
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("cpu/possible: unexpected {text:?}")))?;
    Ok(last + 1)
}

/// One registered entry: the two buffers the kernel was given.
struct Entry {
    header: &'static mut [u8],
    payload: &'static mut [u8],
}

/// One CPU's queue: its ring and entries.
pub struct FuseQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: Arc<OwnedFd>,
    qid: u16,
    entries: Vec<Entry>,
}

/// A request as the kernel put it in an entry.
#[derive(Debug)]
pub struct RingRequest<'a> {
    /// `struct fuse_in_header`.
    pub in_header: &'a [u8],
    /// The operation's own header (`fuse_open_in`...), as much of the 128 bytes as it uses.
    pub op_in: &'a [u8],
    /// The rest of the request's arguments: names, written data.
    pub payload: &'a [u8],
}

impl FuseQueue {
    /// Sets up queue `qid` with `depth` entries of `payload_len` bytes and registers them.
    /// The ring accepts submissions from this thread only (IORING_SETUP_SINGLE_ISSUER).
    pub fn register(
        dev: Arc<OwnedFd>,
        qid: u16,
        depth: u16,
        payload_len: usize,
    ) -> io::Result<FuseQueue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(u32::from(depth).next_power_of_two())?;
        let mut queue = FuseQueue {
            ring,
            dev,
            qid,
            entries: Vec::new(),
        };
        for i in 0..depth as usize {
            let entry = Entry {
                header: Box::leak(vec![0u8; 4096].into_boxed_slice()),
                payload: Box::leak(vec![0u8; payload_len].into_boxed_slice()),
            };
            let iov: &'static [libc::iovec; 2] = Box::leak(Box::new([
                libc::iovec {
                    iov_base: entry.header.as_mut_ptr().cast(),
                    iov_len: HEADER_LEN,
                },
                libc::iovec {
                    iov_base: entry.payload.as_mut_ptr().cast(),
                    iov_len: payload_len,
                },
            ]));
            queue.entries.push(entry);
            let sqe = opcode::UringCmd80::new(types::Fd(queue.dev.as_raw_fd()), CMD_REGISTER)
                .cmd(command(qid, 0))
                .addr(Some(iov.as_ptr() as u64))
                .build()
                .user_data(i as u64);
            queue.push(with_len(sqe, 2))?;
        }
        queue.ring.submit()?;
        Ok(queue)
    }

    /// Submits what is queued (commits), waits for at least one request, and returns the
    /// entries that hold one. An error ends the queue: the connection is gone (ENOTCONN at
    /// unmount) or the kernel refused the registration.
    pub fn wait(&mut self, ready: &mut Vec<usize>) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        self.completed(ready)
    }

    /// As `wait`, but looks for a request for up to `spin` first, yielding the CPU between
    /// looks (the yield also runs the task work that posts a request, COOP_TASKRUN).
    pub fn poll(&mut self, ready: &mut Vec<usize>, spin: std::time::Duration) -> io::Result<()> {
        if !spin.is_zero() {
            self.ring.submit()?;
            let start = std::time::Instant::now();
            while start.elapsed() < spin {
                rustix::thread::sched_yield();
                self.completed(ready)?;
                if !ready.is_empty() {
                    return Ok(());
                }
            }
        }
        self.wait(ready)
    }

    /// The entries whose command completed, without waiting: a refused registration shows
    /// here at once (a registered entry completes only when a request comes).
    pub fn completed(&mut self, ready: &mut Vec<usize>) -> io::Result<()> {
        ready.clear();
        for cqe in self.ring.completion() {
            if cqe.result() < 0 {
                return Err(io::Error::from_raw_os_error(-cqe.result()));
            }
            ready.push(cqe.user_data() as usize);
        }
        Ok(())
    }

    /// The request in entry `i` (after `wait` named it).
    pub fn request(&self, i: usize) -> RingRequest<'_> {
        let e = &self.entries[i];
        let len = u32_at(e.header, ENT_IN_OUT + 16) as usize;
        RingRequest {
            in_header: &e.header[IN_OUT..IN_OUT + IN_HEADER_LEN],
            op_in: &e.header[OP_IN..OP_IN + 128],
            payload: &e.payload[..len.min(e.payload.len())],
        }
    }

    /// Answers the request in entry `i`: `error` (a negative errno, or 0) and the reply's
    /// arguments, which `fill` writes into the payload buffer (returning their length; a
    /// reply too large for it becomes ERANGE). Queued: the next `wait` or `flush` submits it.
    pub fn reply(
        &mut self,
        i: usize,
        error: i32,
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> io::Result<()> {
        let e = &mut self.entries[i];
        let unique = u64_at(e.header, IN_OUT + 8);
        let commit_id = u64_at(e.header, ENT_IN_OUT + 8);
        let (error, len) = match error {
            0 => match fill(e.payload) {
                Some(n) => (0, n),
                None => (-libc::ERANGE, 0),
            },
            e => (e, 0),
        };
        let out = &mut e.header[IN_OUT..IN_OUT + OUT_HEADER_LEN];
        out[0..4].copy_from_slice(&((OUT_HEADER_LEN + len) as u32).to_ne_bytes());
        out[4..8].copy_from_slice(&error.to_ne_bytes());
        out[8..16].copy_from_slice(&unique.to_ne_bytes());
        e.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), CMD_COMMIT_AND_FETCH)
            .cmd(command(self.qid, commit_id))
            .build()
            .user_data(i as u64);
        self.push(sqe)
    }

    /// Submits the queued replies now (a reply that must reach the kernel before the server
    /// goes on, such as an open holding its inode's passthrough state).
    pub fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        // SAFETY: the buffers the entry names (the iovecs and what they point to) are leaked,
        // so they outlive the command; the command area is plain data.
        let pushed = unsafe { self.ring.submission().push(&sqe) };
        if pushed.is_err() {
            // One slot per entry and one command per entry at a time: full means a bug.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }
}

/// `struct fuse_uring_cmd_req` in the SQE's 80-byte command area.
fn command(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    cmd
}

/// The SQE with its `len` field set: REGISTER names two iovecs, which io-uring's
/// `UringCmd80` builder has no setter for.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]`: the 64-byte `io_uring_sqe` then 64 bytes of
    // command, 128 bytes with no padding and no invalid bit patterns (plain integers and
    // byte arrays), so it round-trips through bytes; `len` is the u32 at offset 24 of
    // `io_uring_sqe` (include/uapi/linux/io_uring.h).
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_names_queue_and_commit() {
        let cmd = command(3, 0x1122);
        assert_eq!(u64_at(&cmd, 8), 0x1122);
        assert_eq!(u16::from_ne_bytes([cmd[16], cmd[17]]), 3);
    }

    #[test]
    fn with_len_sets_only_the_sqe_length() {
        let sqe = opcode::UringCmd80::new(types::Fd(7), CMD_REGISTER)
            .addr(Some(0xabc0))
            .build();
        // SAFETY: as in `with_len`.
        let before: [u8; 128] = unsafe { std::mem::transmute(sqe.clone()) };
        // SAFETY: as in `with_len`.
        let after: [u8; 128] = unsafe { std::mem::transmute(with_len(sqe, 2)) };
        assert_eq!(u32_at(&after, 24), 2);
        assert_eq!(before[..24], after[..24]);
        assert_eq!(before[28..], after[28..]);
        assert_eq!(u64_at(&after, 16), 0xabc0);
    }
}

//! Extended attributes, passed through as they are on SOURCE.
//!
//! The `*_op` methods take the request's own arguments, as fuser's `Filesystem` trait
//! gives them (the trait methods in `mod.rs` only hand them on).
#![allow(clippy::too_many_arguments)]

#[allow(unused_imports)]
use super::*;

impl MappedFs {
    /// getxattr/listxattr: size 0 asks for the size; otherwise the value, or ERANGE from
    /// SOURCE when it does not fit.
    pub(super) fn xattr_reply(
        reply: ReplyXattr,
        size: u32,
        query: impl FnOnce() -> rustix::io::Result<usize>,
        read: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
    ) {
        if size == 0 {
            return match query() {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(errno(e)),
            };
        }
        let mut buf = vec![0u8; size as usize];
        match read(&mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    pub(super) fn setxattr_op(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = self.node_fd(ino).and_then(|(_, fd)| {
            let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
            rustix::fs::setxattr(proc_path(fd.as_raw_fd()), name, value, flags).map_err(errno)
        });
        reply_empty(reply, result);
    }

    pub(super) fn getxattr_op(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let fd = match self.node_fd(ino) {
            Ok((_, fd)) => fd,
            Err(e) => return reply.error(e),
        };
        let path = proc_path(fd.as_raw_fd());
        Self::xattr_reply(
            reply,
            size,
            || rustix::fs::getxattr_query(&path, name),
            |buf| rustix::fs::getxattr(&path, name, buf),
        );
    }

    pub(super) fn listxattr_op(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fd = match self.node_fd(ino) {
            Ok((_, fd)) => fd,
            Err(e) => return reply.error(e),
        };
        let path = proc_path(fd.as_raw_fd());
        Self::xattr_reply(
            reply,
            size,
            || rustix::fs::listxattr_query(&path),
            |buf| rustix::fs::listxattr(&path, buf),
        );
    }

    pub(super) fn removexattr_op(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let result = self.node_fd(ino).and_then(|(_, fd)| {
            rustix::fs::removexattr(proc_path(fd.as_raw_fd()), name).map_err(errno)
        });
        reply_empty(reply, result);
    }
}

//! Extended attributes, passed through as they are on SOURCE (through the node's magic
//! link: the node holds an O_PATH descriptor, which the *xattr calls do not take).

use super::*;

/// What GETXATTR and LISTXATTR answer: the size a value needs (when asked with size 0), or
/// the value.
pub(super) enum XattrValue {
    Size(u32),
    Data(Vec<u8>),
}

impl MappedFs {
    pub(super) fn set_xattr(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        let (_, fd) = self.node_fd(ino)?;
        let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
        rustix::fs::setxattr(proc_path(fd.as_raw_fd()), name, value, flags).map_err(errno)
    }

    pub(super) fn get_xattr(&self, ino: INodeNo, name: &OsStr, size: u32) -> Result<XattrValue> {
        let (_, fd) = self.node_fd(ino)?;
        let path = proc_path(fd.as_raw_fd());
        xattr_value(
            size,
            || rustix::fs::getxattr_query(&path, name),
            |buf| rustix::fs::getxattr(&path, name, buf),
        )
    }

    pub(super) fn list_xattr(&self, ino: INodeNo, size: u32) -> Result<XattrValue> {
        let (_, fd) = self.node_fd(ino)?;
        let path = proc_path(fd.as_raw_fd());
        xattr_value(
            size,
            || rustix::fs::listxattr_query(&path),
            |buf| rustix::fs::listxattr(&path, buf),
        )
    }

    pub(super) fn remove_xattr(&self, ino: INodeNo, name: &OsStr) -> Result<()> {
        let (_, fd) = self.node_fd(ino)?;
        rustix::fs::removexattr(proc_path(fd.as_raw_fd()), name).map_err(errno)
    }
}

/// Size 0 asks for the size; otherwise the value, or ERANGE from SOURCE when it does not fit.
fn xattr_value(
    size: u32,
    query: impl FnOnce() -> rustix::io::Result<usize>,
    read: impl FnOnce(&mut [u8]) -> rustix::io::Result<usize>,
) -> Result<XattrValue> {
    if size == 0 {
        return query().map(|n| XattrValue::Size(n as u32)).map_err(errno);
    }
    let mut buf = vec![0u8; size as usize];
    let n = read(&mut buf).map_err(errno)?;
    buf.truncate(n);
    Ok(XattrValue::Data(buf))
}

//! The engine's HTTP API over its unix socket, for the few reads where the CLI's start-up
//! (about 10 ms) would dominate: one `GET`, `Connection: close`.

use std::io;
use std::path::{Path, PathBuf};

use super::current_context;

/// The engine's socket when nothing but the default or a unix DOCKER_HOST can be in effect.
pub fn socket() -> Option<PathBuf> {
    if current_context().is_some_and(|c| c != "default") {
        return None;
    }
    match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        None => Some(PathBuf::from("/var/run/docker.sock")),
        Some(host) => host.strip_prefix("unix://").map(PathBuf::from),
    }
}

/// One `GET` on the engine API over its unix socket: (status, body). HTTP/1.1 with
/// `Connection: close`, so the body ends where the stream ends (or is chunked).
pub fn get(socket: &Path, path: &str) -> io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a plain request path",
        ));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse_http_response(&response)
}

fn parse_http_response(response: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| bad())?;
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(bad)?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&rest[..end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(rest.get(..size).ok_or_else(bad)?);
        rest = rest.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Id\":1}";
        assert_eq!(
            parse_http_response(plain).unwrap(),
            (200, b"{\"Id\":1}".to_vec())
        );
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nno s\r\n7\r\nuch img\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked).unwrap(),
            (404, b"no such img".to_vec())
        );
        for broken in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(parse_http_response(broken).is_err());
        }
    }
}

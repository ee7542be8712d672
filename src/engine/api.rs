//! The engine's HTTP API over its unix socket, for the few reads where the CLI's start-up
//! (about 10 ms) would dominate: one `GET` (hyper's client, as `proxy` uses it).

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

/// How long one read may take.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One `GET` on the engine API over its unix socket: (status, body). hyper's HTTP/1.1
/// client, as the proxy uses, on a small runtime of its own for the one request.
pub fn get(socket: &Path, path: &str) -> io::Result<(u16, Vec<u8>)> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?;
        Ok::<_, io::Error>((status, body.to_bytes().to_vec()))
    };
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the engine did not answer"))?
    })
}

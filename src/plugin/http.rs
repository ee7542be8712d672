//! The plugin's HTTP endpoint: Docker talks to a plugin with JSON POSTs over a unix socket.
//!
//! Owns the socket and HTTP (hyper on a small tokio runtime); what a request means is the
//! caller's `answer`, a plain function run off the reactor (it makes mounts, which block).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// The largest request body the driver reads: Docker's requests are small JSON objects.
const MAX_BODY: usize = 64 * 1024;

/// One answer: HTTP status and a JSON body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Binds the unix socket at `path` (replacing a stale one), for [`serve`]. Apart so that
/// the socket can be made before the caller changes mount namespace.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    listener.set_nonblocking(true).context("socket")?;
    Ok(listener)
}

/// Serves POSTs on `listener` until the process ends; each request's path and body go to
/// `answer`.
pub fn serve<F>(listener: std::os::unix::net::UnixListener, answer: F) -> Result<()>
where
    F: Fn(&str, &[u8]) -> Answer + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .context("starting the plugin's runtime")?;
    let answer = Arc::new(answer);
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).context("socket")?;
        loop {
            let (stream, _) = listener.accept().await.context("accepting")?;
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(Arc::clone(&answer), request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle<F>(
    answer: Arc<F>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    F: Fn(&str, &[u8]) -> Answer + Send + Sync + 'static,
{
    let path = request.uri().path().to_string();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(reply(
                400,
                format!("{{\"Err\":\"reading the request: {e}\"}}").into_bytes(),
            ));
        }
    };
    let answered = tokio::task::spawn_blocking(move || answer(&path, &body)).await;
    Ok(match answered {
        Ok(a) => reply(a.status, a.body),
        Err(_) => reply(500, b"{\"Err\":\"the asme volume driver failed\"}".to_vec()),
    })
}

fn reply(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(super::protocol::CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A POST as Docker sends it reaches `answer` with its path and body, and the answer comes
    /// back with its status and the plugin content type.
    #[test]
    fn a_post_is_answered() {
        let dir = std::env::temp_dir().join(format!("asme-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("p.sock");
        // Bound before the server runs: connecting cannot race it.
        let listener = bind(&socket).unwrap();
        std::thread::spawn(move || {
            serve(listener, |path, body| Answer {
                status: if path == "/Plugin.Activate" { 200 } else { 404 },
                body: [path.as_bytes(), b" ", body].concat(),
            })
        });
        let mut stream = UnixStream::connect(&socket).unwrap();
        let body = "{}";
        write!(
            stream,
            "POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.contains(super::super::protocol::CONTENT_TYPE),
            "{response}"
        );
        assert!(response.ends_with("/Plugin.Activate {}"), "{response}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

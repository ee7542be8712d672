//! One request, forwarded to the engine: container creation rewritten (`rewrite`), the rest
//! as it came. Bodies stream both ways (logs -f, events, stats, chunked uploads); a request
//! the engine upgrades (attach, exec start: `Upgrade: tcp`, answered 101) becomes a raw
//! tunnel between the client and the engine until either side closes.
//!
//! Each request gets its own connection to the engine, so an upgraded one can become the
//! tunnel and a slow stream holds up nobody else.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::rewrite::{self, Refused, Sources};
use crate::owner::Owner;

/// The largest container-create body the proxy reads (the engine's own requests are a few
/// KiB): past it the request is refused, and the connection closed.
pub const MAX_CREATE: usize = 16 * 1024 * 1024;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Each direction's buffer in an attach or exec tunnel.
const TUNNEL_BUFFER: usize = 256 * 1024;

/// What every request needs: where the engine is, whose the files are, what sources are.
pub struct Proxy {
    pub engine: std::path::PathBuf,
    pub owner: Owner,
    pub sources: Box<dyn Sources + Send + Sync>,
}

/// Answers one request: the engine's answer, or the engine's error shape for what the proxy
/// itself refused or could not forward.
pub async fn handle(
    proxy: Arc<Proxy>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let answer = if let Some(rewrite) = rewritten_body(&request) {
        create(&proxy, request, rewrite).await
    } else if let Some(id) = removes_container(&request) {
        remove(&proxy, request, id).await
    } else if let Some(read_back) = reads_containers_back(&request) {
        let request = request.map(|b| b.boxed());
        match forward(&proxy.engine, request).await {
            Ok(response) => Ok(shown_as_created(response, read_back).await),
            Err(refused) => Err(refused),
        }
    } else {
        let request = request.map(|b| b.boxed());
        forward(&proxy.engine, request).await
    };
    Ok(answer.unwrap_or_else(|refused| error(refused.status, &refused.message)))
}

/// `DELETE /containers/{id}`: the container's id or name.
fn removes_container(request: &Request<Incoming>) -> Option<String> {
    if request.method() != Method::DELETE {
        return None;
    }
    let id = strip_version(request.uri().path()).strip_prefix("/containers/")?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
}

/// Removes a container; then, if it was one of the proxy's, the driver volumes of its binds,
/// which a client that removes without `v=1` (a CI runner's `docker rm --force`, the SDK's
/// `remove()`) would otherwise leave behind, where a bind leaves nothing.
async fn remove(
    proxy: &Arc<Proxy>,
    request: Request<Incoming>,
    id: String,
) -> Result<Response<Body>, Refused> {
    let volumes = match get(&proxy.engine, &format!("/containers/{id}/json")).await {
        Some(container) => rewrite::volumes_of(&container),
        None => Vec::new(),
    };
    let response = forward(&proxy.engine, request.map(|b| b.boxed())).await?;
    if response.status().is_success() {
        for volume in volumes {
            let _ = send(&proxy.engine, Method::DELETE, &format!("/volumes/{volume}")).await;
        }
    }
    Ok(response)
}

/// A GET of the engine's JSON (`None` on any failure).
async fn get(engine: &Path, path: &str) -> Option<serde_json::Value> {
    let response = send(engine, Method::GET, path).await.ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body = Limited::new(response.into_body(), MAX_CREATE)
        .collect()
        .await
        .ok()?;
    serde_json::from_slice(&body.to_bytes()).ok()
}

/// A request of the proxy's own to the engine, with no body.
async fn send(engine: &Path, method: Method, path: &str) -> Result<Response<Body>, Refused> {
    let body = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "docker")
        .body(body)
        .map_err(|e| Refused {
            status: 500,
            message: format!("asme proxy: {e}"),
        })?;
    forward(engine, request).await
}

/// Which read-back of containers a request is.
#[derive(Clone, Copy)]
enum ReadBack {
    /// `GET /containers/{id}/json`: one container.
    One,
    /// `GET /containers/json`: a list.
    List,
}

fn reads_containers_back(request: &Request<Incoming>) -> Option<ReadBack> {
    if request.method() != Method::GET {
        return None;
    }
    let path = strip_version(request.uri().path());
    if path == "/containers/json" {
        return Some(ReadBack::List);
    }
    let id = path.strip_prefix("/containers/")?.strip_suffix("/json")?;
    (!id.is_empty() && !id.contains('/')).then_some(ReadBack::One)
}

/// The engine's answer about containers with the proxy's rewritten ones shown as created
/// (`rewrite::inspected`); anything else, or a body that is not JSON, as it came.
async fn shown_as_created(response: Response<Body>, read_back: ReadBack) -> Response<Body> {
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = Limited::new(body, MAX_CREATE)
        .collect()
        .await
        .map(|b| b.to_bytes())
    else {
        return error(
            502,
            "asme proxy: the engine's answer was cut short or too large",
        );
    };
    let rewritten = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|mut value| {
            let changed = match (read_back, &mut value) {
                (ReadBack::One, value) => rewrite::inspected(value),
                (ReadBack::List, serde_json::Value::Array(list)) => {
                    // Every entry, not only up to the first rewritten one.
                    let mut any = false;
                    for container in list.iter_mut() {
                        any |= rewrite::inspected(container);
                    }
                    any
                }
                _ => false,
            };
            changed.then(|| serde_json::to_vec(&value).expect("JSON values serialise"))
        });
    let bytes = rewritten.map(Bytes::from).unwrap_or(bytes);
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(
        parts,
        Full::new(bytes).map_err(|never| match never {}).boxed(),
    )
}

/// How a request's body is rewritten: `POST /containers/create` (`rewrite::create`), and
/// `POST /services/create` or `/services/{id}/update` (`rewrite::service`).
type Rewrite = fn(&[u8], Owner, &dyn Sources) -> Result<Option<Vec<u8>>, Refused>;

fn rewritten_body(request: &Request<Incoming>) -> Option<Rewrite> {
    if request.method() != Method::POST {
        return None;
    }
    let path = strip_version(request.uri().path());
    if path == "/containers/create" {
        return Some(rewrite::create);
    }
    let service = path.strip_prefix("/services/")?;
    let updates = service
        .strip_suffix("/update")
        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
    (service == "create" || updates).then_some(rewrite::service as Rewrite)
}

/// The path without its API version prefix (`/v1.41/containers/create`).
fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v")
        && let Some((version, tail)) = rest.split_once('/')
        && version
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return &path[path.len() - tail.len() - 1..];
    }
    path
}

async fn create(
    proxy: &Arc<Proxy>,
    request: Request<Incoming>,
    rewrite: Rewrite,
) -> Result<Response<Body>, Refused> {
    let (mut parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_CREATE).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Err(Refused {
                status: 413,
                message: format!("asme proxy: reading the request: {e}"),
            });
        }
    };
    // The rewrite may stat, create folders and ask the engine: off the reactor.
    let worker = Arc::clone(proxy);
    let original = body.clone();
    let rewritten = tokio::task::spawn_blocking(move || {
        rewrite(&original, worker.owner, worker.sources.as_ref())
    })
    .await
    .map_err(|e| Refused {
        status: 500,
        message: format!("asme proxy: {e}"),
    })??;
    let body = rewritten.map(Bytes::from).unwrap_or(body);
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let body = Full::new(body).map_err(|never| match never {}).boxed();
    forward(&proxy.engine, Request::from_parts(parts, body)).await
}

/// Sends `request` to the engine on a connection of its own and returns the answer; on 101
/// the two upgraded connections are joined.
async fn forward(engine: &Path, mut request: Request<Body>) -> Result<Response<Body>, Refused> {
    let unreachable = |e: &dyn std::fmt::Display| Refused {
        status: 502,
        message: format!(
            "asme proxy: cannot reach the engine at {}: {e}",
            engine.display()
        ),
    };
    let stream = tokio::net::UnixStream::connect(engine)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection.with_upgrades());
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let engine_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(engine)) = (client_upgrade.await, engine_upgrade.await) {
                tunnel(client, engine).await;
            }
        });
    }
    Ok(response.map(|b| b.boxed()))
}

/// Joins an upgraded client connection to the upgraded engine connection until either side
/// is done. Both are unix sockets under hyper's wrapper: unwrapped (what hyper had already
/// read is passed on first), the bytes move between the sockets themselves, in big reads.
async fn tunnel(client: hyper::upgrade::Upgraded, engine: hyper::upgrade::Upgraded) {
    type Socket = TokioIo<tokio::net::UnixStream>;
    let client = match client.downcast::<Socket>() {
        Ok(parts) => parts,
        // Not a plain socket (cannot happen here): through hyper's wrapper.
        Err(client) => {
            let none = Bytes::new();
            return join(
                TokioIo::new(client),
                none.clone(),
                TokioIo::new(engine),
                none,
            )
            .await;
        }
    };
    let client_io = client.io.into_inner();
    match engine.downcast::<Socket>() {
        Ok(engine) => {
            join(
                client_io,
                client.read_buf,
                engine.io.into_inner(),
                engine.read_buf,
            )
            .await;
        }
        Err(engine) => {
            join(
                client_io,
                client.read_buf,
                TokioIo::new(engine),
                Bytes::new(),
            )
            .await
        }
    }
}

/// Copies both ways between `a` and `b` until both are done; `a_read` and `b_read` are what
/// was already read from each, owed to the other first.
async fn join<A, B>(mut a: A, a_read: Bytes, mut b: B, b_read: Bytes)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if b.write_all(&a_read).await.is_err() || a.write_all(&b_read).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, TUNNEL_BUFFER, TUNNEL_BUFFER)
        .await;
}

/// The engine's error shape: `{"message": ...}` as JSON with `status`.
pub fn error(status: u16, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_are_stripped_from_paths() {
        for (path, want) in [
            ("/v1.41/containers/create", "/containers/create"),
            ("/containers/create", "/containers/create"),
            ("/v1.41/containers/abc/json", "/containers/abc/json"),
            ("/v1/x", "/x"),
            ("/volumes/create", "/volumes/create"),
            ("/vx.1/containers/create", "/vx.1/containers/create"),
            ("/v1.41", "/v1.41"),
        ] {
            assert_eq!(strip_version(path), want, "{path}");
        }
    }
}

//! Container creation, rewritten: the bind mounts of folders the user owns become anonymous
//! volumes of asme's driver (the durable mapping: idmap, or FUSE where the folder needs it),
//! everything else stays as the client sent it. Pure: what a source is, and who the
//! container's user is, come from a [`Sources`] the caller provides.
//!
//! Where a bind source can appear in `POST /containers/create`: `HostConfig.Binds`
//! (`SRC:DST[:OPTIONS]`) and `HostConfig.Mounts` of `Type: bind`. The rewritten container
//! carries the original binds in the label [`LABEL`], so what it was asked for stays visible.

use serde_json::{Map, Value, json};

use crate::owner::Owner;
use crate::plugin::options::Mapping;

/// The label holding the bind mounts as the client wrote them (a JSON list of strings for
/// `Binds`, of objects for `Mounts`).
pub const LABEL: &str = "asme.proxy.binds";

/// What a bind source is, as the user finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder the user owns: mapped.
    OwnFolder,
    /// Missing: docker would create it as root; the user creates it instead, and it is mapped.
    Missing,
    /// Anything else the user can reach (a file, a socket, someone else's folder): as sent.
    Other,
    /// The user may not reach it: refused, with why.
    Unreachable(String),
}

/// What the rewrite asks of the world.
pub trait Sources {
    fn classify(&self, path: &str) -> Source;
    /// Creates the missing folder `path` as the user (`-v` of a missing source).
    fn create(&self, path: &str) -> Result<(), String>;
    /// The container's uid and gid for `user` (the request's `User`, maybe empty) of `image`,
    /// and whether the image's program changes users (then the mapping is FUSE's).
    fn container(&self, image: &str, user: &str) -> Result<((u32, u32), bool), String>;
}

/// Why a create is refused: the engine's own shape is `{"message": ...}` with this status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// Rewrites a create request's JSON `body` for `owner`. `Ok(None)`: nothing to change (send
/// it as it came, malformed JSON included: the engine answers that in its own words).
pub fn create(
    body: &[u8],
    owner: Owner,
    sources: &dyn Sources,
) -> Result<Option<Vec<u8>>, Refused> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let Some(host) = request.get_mut("HostConfig").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let binds = take_list(host, "Binds");
    let mounts = take_list(host, "Mounts");
    let plan = plan(&binds, &mounts, sources)?;
    if plan.mapped.is_empty() {
        put_back(host, "Binds", binds);
        put_back(host, "Mounts", mounts);
        return Ok(None);
    }
    let image = request["Image"].as_str().unwrap_or_default().to_string();
    let user = request["User"].as_str().unwrap_or_default().to_string();
    let (container, mapping) = container_mapping(sources, &image, &user)?;
    for missing in &plan.to_create {
        sources.create(missing).map_err(|message| Refused {
            status: 500,
            message,
        })?;
    }
    let host = request["HostConfig"]
        .as_object_mut()
        .expect("checked above");
    let mut new_mounts = plan.kept_mounts;
    for bind in &plan.mapped {
        new_mounts.push(volume_mount(bind, owner, container, mapping));
    }
    put_back(host, "Binds", plan.kept_binds);
    put_back(host, "Mounts", new_mounts);
    let original = json!({"Binds": binds, "Mounts": mounts}).to_string();
    let labels = request
        .as_object_mut()
        .expect("an object")
        .entry("Labels")
        .or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[LABEL] = Value::String(original);
    Ok(Some(
        serde_json::to_vec(&request).expect("JSON values serialise"),
    ))
}

/// `POST /services/create` and `/services/{id}/update`: the bind mounts of a service's task
/// (`TaskTemplate.ContainerSpec.Mounts`) made volumes of the driver the same way, so a swarm
/// service's tasks write as the user too (on each node, the folder and the plugin must be
/// there, as for a bind).
pub fn service(
    body: &[u8],
    owner: Owner,
    sources: &dyn Sources,
) -> Result<Option<Vec<u8>>, Refused> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let Some(spec) = request
        .pointer_mut("/TaskTemplate/ContainerSpec")
        .and_then(Value::as_object_mut)
    else {
        return Ok(None);
    };
    let mounts = take_list(spec, "Mounts");
    let plan = plan(&[], &mounts, sources)?;
    if plan.mapped.is_empty() {
        put_back(spec, "Mounts", mounts);
        return Ok(None);
    }
    let text = |key: &str| {
        spec.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (image, user) = (text("Image"), text("User"));
    let (container, mapping) = container_mapping(sources, &image, &user)?;
    let mut new_mounts = plan.kept_mounts;
    for bind in &plan.mapped {
        new_mounts.push(volume_mount(bind, owner, container, mapping));
    }
    put_back(spec, "Mounts", new_mounts);
    Ok(Some(
        serde_json::to_vec(&request).expect("JSON values serialise"),
    ))
}

/// The container's ids, and the mapping: FUSE's where the image's program changes users.
fn container_mapping(
    sources: &dyn Sources,
    image: &str,
    user: &str,
) -> Result<((u32, u32), Mapping), Refused> {
    let (container, changes_users) = sources.container(image, user).map_err(|message| Refused {
        status: 400,
        message,
    })?;
    let mapping = if changes_users {
        Mapping::Fuse
    } else {
        Mapping::Auto
    };
    Ok((container, mapping))
}

/// One bind mount to map: source folder, target, read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bind {
    source: String,
    target: String,
    read_only: bool,
}

#[derive(Default)]
struct Plan {
    kept_binds: Vec<Value>,
    kept_mounts: Vec<Value>,
    mapped: Vec<Bind>,
    to_create: Vec<String>,
}

fn plan(binds: &[Value], mounts: &[Value], sources: &dyn Sources) -> Result<Plan, Refused> {
    let mut plan = Plan::default();
    for value in binds {
        match value.as_str().and_then(parse_bind) {
            Some(bind) => match decide(&bind.source, true, sources)? {
                Decision::Map { create } => {
                    if create {
                        plan.to_create.push(bind.source.clone());
                    }
                    plan.mapped.push(bind);
                }
                Decision::Keep => plan.kept_binds.push(value.clone()),
            },
            None => plan.kept_binds.push(value.clone()),
        }
    }
    for value in mounts {
        match parse_mount(value) {
            Some(bind) => match decide(&bind.source, false, sources)? {
                Decision::Map { .. } => plan.mapped.push(bind),
                Decision::Keep => plan.kept_mounts.push(value.clone()),
            },
            None => plan.kept_mounts.push(value.clone()),
        }
    }
    Ok(plan)
}

enum Decision {
    Map { create: bool },
    Keep,
}

/// `creates`: a `Binds` entry, whose missing source docker would create (a `Mounts` bind's
/// missing source is the engine's error to give).
fn decide(source: &str, creates: bool, sources: &dyn Sources) -> Result<Decision, Refused> {
    Ok(match sources.classify(source) {
        Source::OwnFolder => Decision::Map { create: false },
        Source::Missing if creates => Decision::Map { create: true },
        Source::Missing | Source::Other => Decision::Keep,
        Source::Unreachable(why) => {
            return Err(Refused {
                status: 400,
                message: format!(
                    "invalid mount config for type \"bind\": asme proxy: you may not read the \
                     bind source path {source}: {why}"
                ),
            });
        }
    })
}

/// `SRC:DST[:OPTIONS]` with an absolute SRC and options asme can keep (`ro`, `rw`); `None`
/// for a named volume or options a volume cannot say (propagation, SELinux labels).
fn parse_bind(text: &str) -> Option<Bind> {
    let mut parts = text.split(':');
    let source = parts.next()?;
    let target = parts.next()?;
    let options = parts.next().unwrap_or("");
    if parts.next().is_some() || !source.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut read_only = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" => {}
            _ => return None,
        }
    }
    Some(Bind {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// A `Mounts` entry of type bind with nothing a volume cannot say (no `BindOptions`).
fn parse_mount(value: &Value) -> Option<Bind> {
    let mount = value.as_object()?;
    if mount.get("Type")?.as_str()? != "bind" {
        return None;
    }
    let known = ["Type", "Source", "Target", "ReadOnly", "Consistency"];
    if mount.keys().any(|k| !known.contains(&k.as_str())) {
        return None;
    }
    let source = mount.get("Source")?.as_str()?;
    if !source.starts_with('/') {
        return None;
    }
    Some(Bind {
        source: source.to_string(),
        target: mount.get("Target")?.as_str()?.to_string(),
        read_only: mount
            .get("ReadOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// The anonymous driver volume that stands for `bind`, as `asme run` makes it
/// (`plugin::options::anonymous_volume`), in the API's `Mounts` shape.
fn volume_mount(bind: &Bind, owner: Owner, container: (u32, u32), mapping: Mapping) -> Value {
    let mut options = Map::new();
    options.insert("source".into(), bind.source.clone().into());
    options.insert("owner".into(), owner.to_string().into());
    options.insert("uid".into(), container.0.to_string().into());
    options.insert("gid".into(), container.1.to_string().into());
    if mapping != Mapping::Auto {
        options.insert("mapping".into(), mapping.to_string().into());
    }
    // The driver makes the mapping read-only: docker refuses `ReadOnly` on an anonymous
    // volume.
    if bind.read_only {
        options.insert("ro".into(), "true".into());
    }
    json!({
        "Type": "volume",
        "Target": bind.target,
        "VolumeOptions": {
            "DriverConfig": {"Name": crate::plugin::install::NAME, "Options": options}
        }
    })
}

/// A container as the engine describes it (`GET /containers/{id}/json`, or one entry of
/// `GET /containers/json`), shown as the client created it: the driver volumes that stand
/// for its binds shown as those binds again, and `HostConfig` as sent. Clients that read
/// their containers back (IDEs, CI runners) see what they asked for. `false`: not one of
/// the proxy's rewritten containers.
pub fn inspected(container: &mut Value) -> bool {
    let labels = container
        .get("Config")
        .and_then(|c| c.get("Labels"))
        .or_else(|| container.get("Labels"));
    let Some(original) = labels
        .and_then(|l| l.get(LABEL))
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return false;
    };
    let list = |key: &str| original[key].as_array().cloned().unwrap_or_default();
    let (binds, mounts) = (list("Binds"), list("Mounts"));
    let originals: Vec<Bind> = binds
        .iter()
        .filter_map(|b| b.as_str().and_then(parse_bind))
        .chain(mounts.iter().filter_map(parse_mount))
        .collect();
    if let Some(host) = container
        .get_mut("HostConfig")
        .and_then(Value::as_object_mut)
        && host.contains_key("Binds")
    {
        let or_null = |l: Vec<Value>| {
            if l.is_empty() {
                Value::Null
            } else {
                Value::Array(l)
            }
        };
        host.insert("Binds".into(), or_null(binds));
        host.insert("Mounts".into(), or_null(mounts));
    }
    if let Some(Value::Array(shown)) = container.get_mut("Mounts") {
        for mount in shown.iter_mut() {
            let is_ours = mount["Type"] == "volume" && is_driver(&mount["Driver"]);
            let target = mount["Destination"].as_str().unwrap_or_default();
            if let Some(bind) = originals.iter().find(|b| is_ours && b.target == target) {
                *mount = json!({
                    "Type": "bind",
                    "Source": bind.source,
                    "Destination": bind.target,
                    "Mode": if bind.read_only { "ro" } else { "" },
                    "RW": !bind.read_only,
                    "Propagation": "rprivate",
                });
            }
        }
    }
    true
}

/// The driver volumes that stand for the binds of one of the proxy's containers (as the
/// engine describes it): removed with it, as its binds would have gone.
pub fn volumes_of(container: &Value) -> Vec<String> {
    let ours = container["Config"]["Labels"].get(LABEL).is_some();
    let Some(mounts) = container["Mounts"].as_array().filter(|_| ours) else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter(|m| m["Type"] == "volume" && is_driver(&m["Driver"]))
        .filter_map(|m| m["Name"].as_str().map(str::to_string))
        .collect()
}

/// Whether `driver` names asme's: a managed plugin's name carries its tag (`asme:latest`).
fn is_driver(driver: &Value) -> bool {
    let name = driver.as_str().unwrap_or_default();
    name.split(':').next() == Some(crate::plugin::install::NAME)
}

fn take_list(host: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match host.remove(key) {
        Some(Value::Array(list)) => list,
        Some(other) => {
            host.insert(key.into(), other);
            Vec::new()
        }
        None => Vec::new(),
    }
}

fn put_back(host: &mut Map<String, Value>, key: &str, list: Vec<Value>) {
    if !list.is_empty() {
        host.insert(key.into(), Value::Array(list));
    }
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;

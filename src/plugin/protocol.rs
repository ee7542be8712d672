//! Docker's volume plugin protocol (`docker.volumedriver/1.0`) as serde types. Pure.
//!
//! dockerd POSTs one JSON object to `/Plugin.Activate` and then to `/VolumeDriver.*` on the
//! plugin's socket, and reads one JSON object back. Field names are Go's exported names
//! (PascalCase) as dockerd encodes and decodes them: the requests of moby
//! `volume/drivers/proxy.go`, the volume of `adapter.go` (`proxyVolume`), and the
//! documented examples of docker/cli `docs/extend/plugins_volume.md`. Every failure, on any
//! endpoint, is `{"Err": "message"}`; dockerd prints that message to the user after
//! `VolumeDriver.Create:` and the like, so it is kept to one line.
//!
//! This module owns the wire: paths, message shapes and decoding. What a request does is
//! the driver's; sockets and HTTP are the server's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// The media type dockerd sends and plugins answer with (go-plugins-helpers
/// `sdk/encoder.go`).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

/// The interface name a volume driver declares in its `config.json` (`interface.types`).
pub const INTERFACE: &str = "docker.volumedriver/1.0";

/// One endpoint of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Activate,
    Create,
    Remove,
    Mount,
    Unmount,
    Path,
    Get,
    List,
    Capabilities,
}

impl Endpoint {
    /// Every endpoint, in the order the documentation lists them.
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Activate,
        Endpoint::Create,
        Endpoint::Remove,
        Endpoint::Mount,
        Endpoint::Path,
        Endpoint::Unmount,
        Endpoint::Get,
        Endpoint::List,
        Endpoint::Capabilities,
    ];

    /// The HTTP path dockerd posts to.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Activate => "/Plugin.Activate",
            Endpoint::Create => "/VolumeDriver.Create",
            Endpoint::Remove => "/VolumeDriver.Remove",
            Endpoint::Mount => "/VolumeDriver.Mount",
            Endpoint::Unmount => "/VolumeDriver.Unmount",
            Endpoint::Path => "/VolumeDriver.Path",
            Endpoint::Get => "/VolumeDriver.Get",
            Endpoint::List => "/VolumeDriver.List",
            Endpoint::Capabilities => "/VolumeDriver.Capabilities",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path()[1..])
    }
}

/// The endpoint a request path names, `None` for any other path (answered 404 by the
/// server, which dockerd takes as "not implemented").
pub fn route(path: &str) -> Option<Endpoint> {
    Endpoint::ALL.into_iter().find(|e| e.path() == path)
}

/// `/VolumeDriver.Create`: a volume named `Name` with the `-o` options of `docker volume
/// create` (or `volume-opt=` of `--mount`, or compose's `driver_opts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    #[serde(rename = "Name")]
    pub name: String,
    /// Go sends a nil map as `null`, and `docker volume create -d asme NAME` without `-o`
    /// sends exactly that.
    #[serde(rename = "Opts", default, deserialize_with = "null_as_default")]
    pub opts: HashMap<String, String>,
}

/// A request that names one volume: `/VolumeDriver.Remove`, `.Path` and `.Get`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRequest {
    #[serde(rename = "Name")]
    pub name: String,
}

/// `/VolumeDriver.Mount` and `.Unmount`: volume `Name` for the caller `ID`. dockerd sends a
/// new ID at each container start, one per container using the volume, and the same ID
/// again in the matching Unmount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "ID")]
    pub id: String,
}

/// A request with nothing in it: `/Plugin.Activate` (dockerd sends `null`),
/// `/VolumeDriver.List` and `.Capabilities` (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyRequest {}

/// A decoded request, one variant per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Activate,
    Create(CreateRequest),
    Remove(NameRequest),
    Mount(MountRequest),
    Unmount(MountRequest),
    Path(NameRequest),
    Get(NameRequest),
    List,
    Capabilities,
}

/// A request body that is not what the endpoint takes.
#[derive(Debug, thiserror::Error)]
#[error("malformed {endpoint} request: {source}")]
pub struct ProtocolError {
    pub endpoint: Endpoint,
    #[source]
    pub source: serde_json::Error,
}

impl Request {
    /// Decodes the body posted to `endpoint`. Fields the request does not use are ignored
    /// (a newer dockerd may send more); an empty body or `null` is an empty object.
    ///
    /// # Errors
    ///
    /// A body that is not JSON, or lacks a field the endpoint needs (`Name`, `ID`).
    pub fn decode(endpoint: Endpoint, body: &[u8]) -> Result<Request, ProtocolError> {
        let body = match body.trim_ascii() {
            b"" | b"null" => b"{}".as_slice(),
            body => body,
        };
        fn parse<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
            serde_json::from_slice(body)
        }
        match endpoint {
            Endpoint::Activate => parse::<EmptyRequest>(body).map(|_| Request::Activate),
            Endpoint::Create => parse(body).map(Request::Create),
            Endpoint::Remove => parse(body).map(Request::Remove),
            Endpoint::Mount => parse(body).map(Request::Mount),
            Endpoint::Unmount => parse(body).map(Request::Unmount),
            Endpoint::Path => parse(body).map(Request::Path),
            Endpoint::Get => parse(body).map(Request::Get),
            Endpoint::List => parse::<EmptyRequest>(body).map(|_| Request::List),
            Endpoint::Capabilities => parse::<EmptyRequest>(body).map(|_| Request::Capabilities),
        }
        .map_err(|source| ProtocolError { endpoint, source })
    }
}

/// `/Plugin.Activate`'s answer: the plugin interfaces implemented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

impl ActivateResponse {
    /// `{"Implements": ["VolumeDriver"]}`.
    pub fn volume_driver() -> ActivateResponse {
        ActivateResponse {
            implements: vec!["VolumeDriver".to_string()],
        }
    }
}

/// Success of `/VolumeDriver.Create`, `.Remove` and `.Unmount`: `{"Err": ""}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    #[serde(rename = "Err", default)]
    err: String,
}

/// `/VolumeDriver.Mount`'s and `.Path`'s answer. For a managed plugin the mount point is a
/// path inside the plugin, under its `propagatedMount`; dockerd adds the host prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountpointResponse {
    #[serde(rename = "Mountpoint", default)]
    pub mountpoint: String,
    #[serde(rename = "Err", default)]
    err: String,
}

impl MountpointResponse {
    pub fn new(mountpoint: impl Into<String>) -> MountpointResponse {
        MountpointResponse {
            mountpoint: mountpoint.into(),
            err: String::new(),
        }
    }
}

/// A volume as `/VolumeDriver.Get` and `.List` describe it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    #[serde(rename = "Name")]
    pub name: String,
    /// Only while mounted: dockerd joins a v2 plugin's `Mountpoint` to its propagated-mount
    /// folder even when it is empty (moby `volume/drivers/adapter.go`, `hostPath`), so an
    /// unmounted volume leaves it out, as go-plugins-helpers does (`omitempty`).
    #[serde(
        rename = "Mountpoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mountpoint: String,
    /// RFC 3339 (see [`rfc3339`]): dockerd decodes it into a Go `time.Time`, which refuses
    /// an empty string, so it is left out rather than empty.
    #[serde(rename = "CreatedAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Shown under `Status` by `docker volume inspect`.
    #[serde(
        rename = "Status",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "null_as_none"
    )]
    pub status: Option<BTreeMap<String, serde_json::Value>>,
}

/// `/VolumeDriver.Get`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetResponse {
    #[serde(rename = "Volume")]
    pub volume: VolumeInfo,
    #[serde(rename = "Err", default)]
    err: String,
}

impl GetResponse {
    pub fn new(volume: VolumeInfo) -> GetResponse {
        GetResponse {
            volume,
            err: String::new(),
        }
    }
}

/// `/VolumeDriver.List`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Always an array, never `null`, even with no volume.
    #[serde(rename = "Volumes", default, deserialize_with = "null_as_default")]
    pub volumes: Vec<VolumeInfo>,
    #[serde(rename = "Err", default)]
    err: String,
}

impl ListResponse {
    pub fn new(volumes: Vec<VolumeInfo>) -> ListResponse {
        ListResponse {
            volumes,
            err: String::new(),
        }
    }
}

/// Where a volume exists: `local` (this host) or `global` (once per cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Local,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(rename = "Scope")]
    pub scope: Scope,
}

/// `/VolumeDriver.Capabilities`' answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    #[serde(rename = "Capabilities")]
    pub capabilities: Capabilities,
}

impl CapabilitiesResponse {
    /// asme's scope: `local`. A volume is a folder of this host mapped to an owner of this
    /// host; on a swarm each node makes its own.
    pub fn local() -> CapabilitiesResponse {
        CapabilitiesResponse {
            capabilities: Capabilities {
                scope: Scope::Local,
            },
        }
    }
}

/// The answer to any failed request: `{"Err": "message"}`, with a message of one line that
/// is never empty (dockerd takes an empty `Err` for success).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    err: String,
}

impl ErrorResponse {
    /// The message on one line: lines are joined with "; ", blank ones dropped.
    pub fn new(message: impl fmt::Display) -> ErrorResponse {
        let text = message.to_string();
        let line = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ErrorResponse {
            err: if line.is_empty() {
                "unknown error".to_string()
            } else {
                line
            },
        }
    }

    /// An error with its causes, as `asme` prints them: `what: why: root cause`.
    pub fn from_error(err: &anyhow::Error) -> ErrorResponse {
        ErrorResponse::new(format!("{err:#}"))
    }

    pub fn message(&self) -> &str {
        &self.err
    }
}

/// A Unix time in seconds as RFC 3339 in UTC (`2024-02-29T12:34:56Z`), the form Go's
/// `time.Time` decodes.
pub fn rfc3339(unix_secs: u64) -> String {
    let (days, secs) = (unix_secs / 86_400, unix_secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant, "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`), for days on
/// or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted to 0000-03-01 so that a leap day ends each 4-year cycle.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Go encodes a nil map or slice as `null`: read it as empty.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

fn null_as_none<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Parses `literal` as `T`, writes it back, and checks that nothing changed.
    fn round_trip<T: Serialize + DeserializeOwned>(literal: &str) -> T {
        let parsed: T = serde_json::from_str(literal).unwrap();
        let written: Value = serde_json::to_value(&parsed).unwrap();
        let want: Value = serde_json::from_str(literal).unwrap();
        assert_eq!(written, want, "round trip of {literal}");
        parsed
    }

    // The literals below are the examples of docker/cli docs/extend/plugins_volume.md.

    #[test]
    fn create_request_and_done() {
        let req: CreateRequest = round_trip(r#"{"Name": "volume_name", "Opts": {}}"#);
        assert_eq!(req.name, "volume_name");
        assert!(req.opts.is_empty());
        let req: CreateRequest =
            round_trip(r#"{"Name": "v", "Opts": {"source": "/home/a/src", "ro": ""}}"#);
        assert_eq!(req.opts["source"], "/home/a/src");
        assert_eq!(req.opts["ro"], "");
        round_trip::<Done>(r#"{"Err": ""}"#);
        assert_eq!(
            serde_json::to_string(&Done::default()).unwrap(),
            r#"{"Err":""}"#
        );
    }

    #[test]
    fn create_opts_null_or_missing_is_empty() {
        for body in [r#"{"Name":"v","Opts":null}"#, r#"{"Name":"v"}"#] {
            let Request::Create(req) = Request::decode(Endpoint::Create, body.as_bytes()).unwrap()
            else {
                panic!("not a create: {body}");
            };
            assert_eq!(req.name, "v");
            assert!(req.opts.is_empty(), "{body}");
        }
    }

    #[test]
    fn name_requests() {
        for endpoint in [Endpoint::Remove, Endpoint::Path, Endpoint::Get] {
            let req: NameRequest = round_trip(r#"{"Name": "volume_name"}"#);
            assert_eq!(req.name, "volume_name");
            let decoded = Request::decode(endpoint, br#"{"Name": "volume_name"}"#).unwrap();
            let want = match endpoint {
                Endpoint::Remove => Request::Remove(req),
                Endpoint::Path => Request::Path(req),
                _ => Request::Get(req),
            };
            assert_eq!(decoded, want);
        }
    }

    #[test]
    fn mount_and_unmount() {
        let literal = r#"{
            "Name": "volume_name",
            "ID": "b87d7442095999a92b65b3d9691e697b61713829cc0ffd1bb72e4ccd51aa4d6c"
        }"#;
        let req: MountRequest = round_trip(literal);
        assert_eq!(req.id.len(), 64);
        assert_eq!(
            Request::decode(Endpoint::Mount, literal.as_bytes()).unwrap(),
            Request::Mount(req.clone())
        );
        assert_eq!(
            Request::decode(Endpoint::Unmount, literal.as_bytes()).unwrap(),
            Request::Unmount(req)
        );
        let resp: MountpointResponse =
            round_trip(r#"{"Mountpoint": "/path/under/PropagatedMount", "Err": ""}"#);
        assert_eq!(resp, MountpointResponse::new("/path/under/PropagatedMount"));
    }

    #[test]
    fn get_and_list() {
        let get: GetResponse = round_trip(
            r#"{"Volume": {"Name": "volume_name", "Mountpoint": "/path/under/PropagatedMount",
                "Status": {}}, "Err": ""}"#,
        );
        assert_eq!(get.volume.status, Some(BTreeMap::new()));
        let list: ListResponse = round_trip(
            r#"{"Volumes": [{"Name": "volume_name", "Mountpoint": "/path/under/PropagatedMount"}],
                "Err": ""}"#,
        );
        assert_eq!(list.volumes.len(), 1);
        assert_eq!(list.volumes[0].status, None);
        // go-plugins-helpers' Volume: CreatedAt as a string, left out when unknown.
        let dated: VolumeInfo = round_trip(r#"{"Name": "v", "CreatedAt": "2024-02-29T12:34:56Z"}"#);
        assert_eq!(dated.created_at.as_deref(), Some("2024-02-29T12:34:56Z"));
    }

    #[test]
    fn unmounted_volume_leaves_out_what_it_lacks() {
        let info = VolumeInfo {
            name: "v".into(),
            ..VolumeInfo::default()
        };
        assert_eq!(serde_json::to_string(&info).unwrap(), r#"{"Name":"v"}"#);
        let empty = ListResponse::new(Vec::new());
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            json!({"Volumes": [], "Err": ""})
        );
        let null: ListResponse = serde_json::from_str(r#"{"Volumes": null}"#).unwrap();
        assert!(null.volumes.is_empty());
        let null: VolumeInfo = serde_json::from_str(r#"{"Name": "v", "Status": null}"#).unwrap();
        assert_eq!(null.status, None);
    }

    #[test]
    fn activate_and_capabilities() {
        assert_eq!(
            serde_json::to_value(ActivateResponse::volume_driver()).unwrap(),
            json!({"Implements": ["VolumeDriver"]})
        );
        round_trip::<ActivateResponse>(r#"{"Implements": ["VolumeDriver"]}"#);
        round_trip::<CapabilitiesResponse>(r#"{"Capabilities": {"Scope": "global"}}"#);
        assert_eq!(
            serde_json::to_value(CapabilitiesResponse::local()).unwrap(),
            json!({"Capabilities": {"Scope": "local"}})
        );
        // dockerd sends `null` to Activate (moby pkg/plugins: Call with nil args) and `{}`
        // to List and Capabilities; a body may also be empty.
        for body in ["null", "{}", "", " \n", r#"{"Extra": 1}"#] {
            let b = body.as_bytes();
            assert_eq!(
                Request::decode(Endpoint::Activate, b).unwrap(),
                Request::Activate
            );
            assert_eq!(Request::decode(Endpoint::List, b).unwrap(), Request::List);
            assert_eq!(
                Request::decode(Endpoint::Capabilities, b).unwrap(),
                Request::Capabilities
            );
        }
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let body = br#"{"Name": "v", "ID": "x", "Opts": {"a": "b"}, "Future": [1, 2]}"#;
        assert_eq!(
            Request::decode(Endpoint::Mount, body).unwrap(),
            Request::Mount(MountRequest {
                name: "v".into(),
                id: "x".into()
            })
        );
        assert!(matches!(
            Request::decode(Endpoint::Get, body).unwrap(),
            Request::Get(NameRequest { name }) if name == "v"
        ));
        let info: VolumeInfo =
            serde_json::from_str(r#"{"Name": "v", "Driver": "asme", "Scope": "local"}"#).unwrap();
        assert_eq!(info.name, "v");
    }

    #[test]
    fn malformed_requests_name_the_endpoint() {
        let cases: &[(Endpoint, &str)] = &[
            (Endpoint::Mount, r#"{"Name": "v"}"#),
            (Endpoint::Create, r#"{"Opts": {}}"#),
            (Endpoint::Create, r#"{"Name": "v", "Opts": {"ro": true}}"#),
            (Endpoint::Get, "not json"),
            (Endpoint::List, "42"),
        ];
        for (endpoint, body) in cases {
            let err = Request::decode(*endpoint, body.as_bytes()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("malformed {endpoint} request: ")),
                "{body}: {text}"
            );
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn errors_are_one_line_and_never_empty() {
        let cases: &[(&str, &str)] = &[
            ("volume 'v' not found", "volume 'v' not found"),
            ("first\nsecond\n", "first; second"),
            ("  a \r\n\n  b  ", "a; b"),
            ("", "unknown error"),
            ("\n \n", "unknown error"),
        ];
        for (message, want) in cases {
            let resp = ErrorResponse::new(message);
            assert_eq!(resp.message(), *want, "{message:?}");
            assert_eq!(
                serde_json::to_value(&resp).unwrap(),
                json!({ "Err": want }),
                "{message:?}"
            );
        }
        let err = anyhow::anyhow!("permission denied").context("opening /src");
        assert_eq!(
            ErrorResponse::from_error(&err).message(),
            "opening /src: permission denied"
        );
    }

    #[test]
    fn routes() {
        for endpoint in Endpoint::ALL {
            assert_eq!(route(endpoint.path()), Some(endpoint));
        }
        assert_eq!(route("/VolumeDriver.Mount"), Some(Endpoint::Mount));
        assert_eq!(route("/Plugin.Activate"), Some(Endpoint::Activate));
        for path in [
            "",
            "/",
            "VolumeDriver.Mount",
            "/VolumeDriver.mount",
            "/VolumeDriver.Mount/",
            "/VolumeDriver.Mount?x=1",
            "/NetworkDriver.GetCapabilities",
            "/VolumeDriver.Rename",
        ] {
            assert_eq!(route(path), None, "{path:?}");
        }
        assert_eq!(Endpoint::Create.to_string(), "VolumeDriver.Create");
    }

    #[test]
    fn rfc3339_dates() {
        let cases: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00Z"),
            (86_399, "1970-01-01T23:59:59Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_210_096, "2024-02-29T12:34:56Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc3339(*secs), *want, "{secs}");
        }
    }
}

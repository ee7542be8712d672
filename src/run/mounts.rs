//! The bind mounts of a `docker run`: which `-v`/`--mount` values name host folders, and
//! the same arguments with other sources put in. Pure.
//!
//! Named volumes, anonymous volumes and tmpfs are not bind mounts and are left alone.

use std::path::{Path, PathBuf};

use crate::run::args::{Opt, RunArgs};

/// A host folder (or file) given to the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Index of the option in `RunArgs::opts`.
    pub opt: usize,
    /// The source as written (absolute, or relative to the working folder).
    pub source: String,
    /// `-v`, which creates a missing source, or `--mount`, which refuses one.
    pub kind: BindKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindKind {
    Volume,
    Mount,
}

impl BindMount {
    /// The source as an absolute path, relative ones taken from `cwd` as docker's CLI does.
    pub fn absolute_source(&self, cwd: &Path) -> PathBuf {
        cwd.join(&self.source)
    }
}

/// Every bind mount in `args`, in order.
pub fn bind_mounts(args: &RunArgs) -> Vec<BindMount> {
    let mut binds = Vec::new();
    for (i, opt) in args.opts.iter().enumerate() {
        let Some(value) = opt.value.as_deref() else {
            continue;
        };
        match opt.flag.long {
            "volume" => {
                let source = value.split(':').next().unwrap_or_default();
                // A host path starts with / or . (a relative path); anything else is a volume name.
                if source.starts_with('/') || source.starts_with('.') {
                    binds.push(BindMount {
                        opt: i,
                        source: source.to_string(),
                        kind: BindKind::Volume,
                    });
                }
            }
            "mount" => {
                let fields = csv_fields(value);
                let is_bind = fields.iter().any(|f| f == "type=bind");
                let source = fields
                    .iter()
                    .find_map(|f| f.strip_prefix("source=").or_else(|| f.strip_prefix("src=")));
                if let (true, Some(source)) = (is_bind, source) {
                    binds.push(BindMount {
                        opt: i,
                        source: source.to_string(),
                        kind: BindKind::Mount,
                    });
                }
            }
            _ => {}
        }
    }
    binds
}

/// `args` with each bind mount's source replaced by the matching path of `sources`.
pub fn with_sources(args: &RunArgs, binds: &[BindMount], sources: &[PathBuf]) -> RunArgs {
    let mut out = args.clone();
    for (bind, new) in binds.iter().zip(sources) {
        let opt = &args.opts[bind.opt];
        let value = opt.value.as_deref().expect("bind mounts have values");
        let new = new.to_string_lossy();
        let value = match bind.kind {
            BindKind::Volume => format!("{new}{}", &value[bind.source.len()..]),
            BindKind::Mount => csv_fields(value)
                .into_iter()
                .map(|f| match f.split_once('=') {
                    Some(("source" | "src", _)) => csv_quote(&format!("source={new}")),
                    _ => csv_quote(&f),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        out.opts[bind.opt] = Opt::new(opt.flag.long, Some(&value));
    }
    out
}

/// Splits one CSV record the way Go's encoding/csv reads it (docker parses --mount with it):
/// fields separated by commas, a field in double quotes may hold commas and "" for a quote.
fn csv_fields(record: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = record.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', false) if field.is_empty() => quoted = true,
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Whether a mount may be written through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A `--mount type=bind` value, each field quoted for docker's CSV parser when needed.
pub fn bind_mount(src: &Path, dst: &Path, access: Access) -> String {
    let mut value = format!(
        "type=bind,{},{}",
        csv_quote(&format!("src={}", src.display())),
        csv_quote(&format!("dst={}", dst.display()))
    );
    if access == Access::ReadOnly {
        value.push_str(",readonly");
    }
    value
}

fn csv_quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> RunArgs {
        RunArgs::parse(argv).unwrap()
    }

    #[test]
    fn finds_bind_mounts_only() {
        let a = args(&[
            "-v",
            "/src:/w",
            "-v",
            "named:/data",
            "--volume=./rel:/r:ro",
            "-v",
            "/anon",
            "--mount",
            "type=bind,src=/m,dst=/m,readonly",
            "--mount",
            "type=volume,src=v,dst=/v",
            "--mount",
            "type=tmpfs,dst=/t",
            "--mount",
            "\"source=/a,b\",target=/ab,type=bind",
            "--tmpfs",
            "/run",
            "-e",
            "X=/y:/z",
            "img",
        ]);
        let found: Vec<_> = bind_mounts(&a)
            .into_iter()
            .map(|b| (b.opt, b.source, b.kind))
            .collect();
        assert_eq!(
            found,
            [
                (0, "/src".to_string(), BindKind::Volume),
                (2, "./rel".to_string(), BindKind::Volume),
                (3, "/anon".to_string(), BindKind::Volume),
                (4, "/m".to_string(), BindKind::Mount),
                (7, "/a,b".to_string(), BindKind::Mount),
            ]
        );
    }

    #[test]
    fn replaces_sources_and_keeps_the_rest() {
        let a = args(&[
            "-v",
            "/src:/w:ro,z",
            "--mount",
            "type=bind,src=/m,dst=/m,readonly,bind-propagation=rslave",
            "-v",
            "named:/data",
            "img",
            "cmd",
        ]);
        let binds = bind_mounts(&a);
        let new = [
            PathBuf::from("/run/asme/leases/x/0"),
            PathBuf::from("/run/asme/leases/x/1"),
        ];
        let out = with_sources(&a, &binds, &new).to_argv();
        assert_eq!(
            out,
            [
                "--volume",
                "/run/asme/leases/x/0:/w:ro,z",
                "--mount",
                "type=bind,source=/run/asme/leases/x/1,dst=/m,readonly,bind-propagation=rslave",
                "-v",
                "named:/data",
                "img",
                "cmd",
            ]
        );
    }

    #[test]
    fn mount_values_survive_docker_csv() {
        let ro = bind_mount(
            Path::new("/usr/bin/asme"),
            Path::new("/.asme-init"),
            Access::ReadOnly,
        );
        assert_eq!(ro, "type=bind,src=/usr/bin/asme,dst=/.asme-init,readonly");
        let odd = bind_mount(Path::new("/a,b/\"c\""), Path::new("/x"), Access::ReadWrite);
        assert_eq!(odd, "type=bind,\"src=/a,b/\"\"c\"\"\",dst=/x");
        // And docker's reading of it gives the path back.
        assert_eq!(csv_fields(&odd)[1], "src=/a,b/\"c\"");
    }

    #[test]
    fn csv_round_trip() {
        for record in ["a,b", "\"a,b\",c", "\"x\"\"y\",z", "", "k=v"] {
            let fields = csv_fields(record);
            let again: Vec<_> = fields.iter().map(|f| csv_quote(f)).collect();
            assert_eq!(csv_fields(&again.join(",")), fields, "{record}");
        }
    }
}

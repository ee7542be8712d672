//! The bind mounts of a `docker run`: which `-v`/`--mount` values name host folders, and
//! the same arguments with other sources put in. Pure.
//!
//! Named volumes, anonymous volumes and tmpfs are not bind mounts and are left alone.

use std::path::{Path, PathBuf};

use crate::engine::mount_arg::{csv_fields, csv_quote};
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

/// `args` with each bind mount's source replaced by the matching path of `sources`, as a
/// `--mount type=bind`: a replaced source exists only while asme's run lasts, and `--mount`
/// makes a later `docker start` of the container fail on the missing source where `-v` would
/// quietly create an empty root-owned folder there and let the container write into it.
/// A `-v` whose options `--mount` cannot say (SELinux relabelling `z`/`Z`) stays a `-v`.
pub fn with_sources(args: &RunArgs, binds: &[BindMount], sources: &[PathBuf]) -> RunArgs {
    let mut out = args.clone();
    for (bind, new) in binds.iter().zip(sources) {
        let opt = &args.opts[bind.opt];
        let value = opt.value.as_deref().expect("bind mounts have values");
        let new = new.to_string_lossy();
        out.opts[bind.opt] = match bind.kind {
            BindKind::Volume => {
                let rest = &value[bind.source.len()..];
                match volume_as_mount(&new, rest) {
                    Some(mount) => Opt::new("mount", Some(&mount)),
                    None => Opt::new(opt.flag.long, Some(&format!("{new}{rest}"))),
                }
            }
            BindKind::Mount => {
                let fields = csv_fields(value)
                    .into_iter()
                    .map(|f| match f.split_once('=') {
                        Some(("source" | "src", _)) => csv_quote(&format!("source={new}")),
                        _ => csv_quote(&f),
                    })
                    .collect::<Vec<_>>();
                Opt::new("mount", Some(&fields.join(",")))
            }
        };
    }
    out
}

/// The `--mount` value of `-v SOURCE:DEST[:OPTIONS]`, given SOURCE and the rest
/// (`:DEST[:OPTIONS]`); `None` where an option has no `--mount` form.
fn volume_as_mount(source: &str, rest: &str) -> Option<String> {
    let rest = rest.strip_prefix(':')?;
    let (dest, options) = rest.split_once(':').unwrap_or((rest, ""));
    let mut fields = vec![
        "type=bind".to_string(),
        csv_quote(&format!("source={source}")),
        csv_quote(&format!("target={dest}")),
    ];
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" | "readonly" => fields.push("readonly".into()),
            "rw" => {}
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                fields.push(format!("bind-propagation={option}"));
            }
            "consistent" | "cached" | "delegated" => fields.push(format!("consistency={option}")),
            _ => return None,
        }
    }
    Some(fields.join(","))
}

/// Where a bind mount appears in the container, as far as a volume of asme's driver can say
/// it (a volume has no propagation, relabelling or consistency options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dest: String,
    pub read_only: bool,
}

/// The target of `bind` in `args`; `None` where it says something a volume cannot.
pub fn volume_target(args: &RunArgs, bind: &BindMount) -> Option<Target> {
    let value = args.opts[bind.opt].value.as_deref()?;
    let mut target = Target {
        dest: String::new(),
        read_only: false,
    };
    match bind.kind {
        BindKind::Volume => {
            let rest = value[bind.source.len()..].strip_prefix(':')?;
            let (dest, options) = rest.split_once(':').unwrap_or((rest, ""));
            target.dest = dest.to_string();
            for option in options.split(',').filter(|o| !o.is_empty()) {
                match option {
                    "ro" | "readonly" => target.read_only = true,
                    "rw" => {}
                    _ => return None,
                }
            }
        }
        BindKind::Mount => {
            for field in csv_fields(value) {
                let (key, val) = field.split_once('=').unwrap_or((field.as_str(), ""));
                match (key, val) {
                    ("type" | "source" | "src", _) => {}
                    ("target" | "dst" | "destination", dest) => target.dest = dest.to_string(),
                    ("readonly" | "ro", "" | "1" | "true") => target.read_only = true,
                    ("readonly" | "ro", "0" | "false") => {}
                    _ => return None,
                }
            }
        }
    }
    (!target.dest.is_empty()).then_some(target)
}

/// `args` with each bind mount replaced by the matching `--mount` value of `values`.
pub fn with_mount_values(args: &RunArgs, binds: &[BindMount], values: &[String]) -> RunArgs {
    let mut out = args.clone();
    for (bind, value) in binds.iter().zip(values) {
        out.opts[bind.opt] = Opt::new("mount", Some(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_targets() {
        let a = args(&[
            "-v",
            "/a:/x",
            "-v",
            "/b:/y:ro",
            "-v",
            "/c:/z:rslave",
            "--mount",
            "type=bind,src=/d,dst=/d,readonly",
            "--mount",
            "type=bind,src=/e,dst=/e,bind-propagation=shared",
            "img",
        ]);
        let targets: Vec<_> = bind_mounts(&a)
            .iter()
            .map(|b| volume_target(&a, b).map(|t| (t.dest, t.read_only)))
            .collect();
        assert_eq!(
            targets,
            [
                Some(("/x".to_string(), false)),
                Some(("/y".to_string(), true)),
                None,
                Some(("/d".to_string(), true)),
                None,
            ]
        );
        let binds = bind_mounts(&a);
        let out = with_mount_values(&a, &binds[..1], &["type=volume,dst=/x".to_string()]);
        assert_eq!(out.to_argv()[..2], ["--mount", "type=volume,dst=/x"]);
    }

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
    fn volumes_become_mounts_that_refuse_a_missing_source() {
        let a = args(&[
            "-v",
            "/src:/w",
            "--volume=./rel:/r:ro,rslave",
            "-v",
            "/a,b:/ab:delegated",
            "img",
        ]);
        let binds = bind_mounts(&a);
        let new = ["/l/0", "/l/1", "/l/a,2"].map(PathBuf::from);
        assert_eq!(
            with_sources(&a, &binds, &new).to_argv(),
            [
                "--mount",
                "type=bind,source=/l/0,target=/w",
                "--mount",
                "type=bind,source=/l/1,target=/r,readonly,bind-propagation=rslave",
                "--mount",
                "type=bind,\"source=/l/a,2\",target=/ab,consistency=delegated",
                "img",
            ]
        );
        // Options that only -v can say keep the -v form.
        assert_eq!(volume_as_mount("/l/0", ":/w:Z"), None);
        assert_eq!(volume_as_mount("/l/0", ":/w:nocopy"), None);
    }
}

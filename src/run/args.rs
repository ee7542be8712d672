//! Lossless parse of the arguments of `docker run`, and their rendering back to argv.
//!
//! Owns the `docker run` flag table and a parser that reads argv the way the Docker CLI's
//! pflag does (`flags.SetInterspersed(false)` in docker/cli `cli/command/container/run.go`):
//! options up to the first positional argument, which is the image, and everything after it
//! is the command, verbatim. Each option keeps the argv elements it came from, so options
//! asme does not touch are passed on byte for byte.
//!
//! Deciding what to remove or add is left to the run plan; global docker flags (`--context`,
//! `-H`) come before `run` and never reach this module.

/// One `docker run` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    pub takes_value: bool,
}

const fn value(long: &'static str, short: Option<char>) -> Flag {
    Flag {
        long,
        short,
        takes_value: true,
    }
}

const fn switch(long: &'static str, short: Option<char>) -> Flag {
    Flag {
        long,
        short,
        takes_value: false,
    }
}

/// Every flag `docker run` accepts: the union of Docker 20.10 and 28.x, including the ones
/// `--help` hides (Windows-only, API-version gated, deprecated, and the aliases in
/// [`ALIASES`]), since pflag parses them all.
static FLAGS: &[Flag] = &[
    value("add-host", None),
    value("annotation", None),
    value("attach", Some('a')),
    value("blkio-weight", None),
    value("blkio-weight-device", None),
    value("cap-add", None),
    value("cap-drop", None),
    value("cgroup-parent", None),
    value("cgroupns", None),
    value("cidfile", None),
    value("cpu-count", None),
    value("cpu-percent", None),
    value("cpu-period", None),
    value("cpu-quota", None),
    value("cpu-rt-period", None),
    value("cpu-rt-runtime", None),
    value("cpu-shares", Some('c')),
    value("cpus", None),
    value("cpuset-cpus", None),
    value("cpuset-mems", None),
    switch("detach", Some('d')),
    value("detach-keys", None),
    value("device", None),
    value("device-cgroup-rule", None),
    value("device-read-bps", None),
    value("device-read-iops", None),
    value("device-write-bps", None),
    value("device-write-iops", None),
    switch("disable-content-trust", None),
    value("dns", None),
    value("dns-opt", None),
    value("dns-option", None),
    value("dns-search", None),
    value("domainname", None),
    value("entrypoint", None),
    value("env", Some('e')),
    value("env-file", None),
    value("expose", None),
    value("gpus", None),
    value("group-add", None),
    value("health-cmd", None),
    value("health-interval", None),
    value("health-retries", None),
    value("health-start-interval", None),
    value("health-start-period", None),
    value("health-timeout", None),
    switch("help", None),
    value("hostname", Some('h')),
    switch("init", None),
    switch("interactive", Some('i')),
    value("io-maxbandwidth", None),
    value("io-maxiops", None),
    value("ip", None),
    value("ip6", None),
    value("ipc", None),
    value("isolation", None),
    value("kernel-memory", None),
    value("label", Some('l')),
    value("label-file", None),
    value("link", None),
    value("link-local-ip", None),
    value("log-driver", None),
    value("log-opt", None),
    value("mac-address", None),
    value("memory", Some('m')),
    value("memory-reservation", None),
    value("memory-swap", None),
    value("memory-swappiness", None),
    value("mount", None),
    value("name", None),
    value("net", None),
    value("net-alias", None),
    value("network", None),
    value("network-alias", None),
    switch("no-healthcheck", None),
    switch("oom-kill-disable", None),
    value("oom-score-adj", None),
    value("pid", None),
    value("pids-limit", None),
    value("platform", None),
    switch("privileged", None),
    value("publish", Some('p')),
    switch("publish-all", Some('P')),
    value("pull", None),
    switch("quiet", Some('q')),
    switch("read-only", None),
    value("restart", None),
    switch("rm", None),
    value("runtime", None),
    value("security-opt", None),
    value("shm-size", None),
    switch("sig-proxy", None),
    value("stop-signal", None),
    value("stop-timeout", None),
    value("storage-opt", None),
    value("sysctl", None),
    value("tmpfs", None),
    switch("tty", Some('t')),
    value("ulimit", None),
    switch("use-api-socket", None),
    value("user", Some('u')),
    value("userns", None),
    value("uts", None),
    value("volume", Some('v')),
    value("volume-driver", None),
    value("volumes-from", None),
    value("workdir", Some('w')),
];

/// Hidden spellings that write the same option as their canonical name (`MarkHidden` in
/// docker/cli `cli/command/container/opts.go`), so `--net host` is `--network host`.
const ALIASES: &[(&str, &str)] = &[
    ("dns-opt", "dns-option"),
    ("net", "network"),
    ("net-alias", "network-alias"),
];

fn canonical(long: &'static str) -> &'static str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == long)
        .map_or(long, |(_, name)| name)
}

/// Looks up a flag by its long name, without the leading `--`.
pub fn lookup_long(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.long == name)
}

/// Looks up a flag by its one-letter shorthand.
pub fn lookup_short(c: char) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.short == Some(c))
}

/// The canonical name that the accessors match `long` against.
fn selector(long: &str) -> Option<&'static str> {
    let found = lookup_long(long).map(|f| canonical(f.long));
    debug_assert!(found.is_some(), "not a docker run flag: --{long}");
    found
}

/// What Go's `strconv.ParseBool` accepts, which is what pflag uses for `--rm=VALUE`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Errors in the user's `docker run` arguments, worded as docker words them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown flag: {0}")]
    UnknownFlag(String),
    #[error("flag needs an argument: {0}")]
    MissingValue(String),
    #[error("\"docker run\" requires at least 1 argument (the image)")]
    NoImage,
    #[error("invalid value for {flag}: {value}")]
    BadBool { flag: String, value: String },
}

/// One option occurrence as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub flag: &'static Flag,
    /// The value; for a switch, `None` unless written as `--rm=false` or `-t=0`.
    pub value: Option<String>,
    /// The exact argv elements it came from (1 or 2); canonical for split combined shorts.
    pub raw: Vec<String>,
}

impl Opt {
    /// An option to add, rendered as `--long VALUE`, `--long` or (switch) `--long=VALUE`.
    ///
    /// # Panics
    ///
    /// If `long` is not in the table or `value` does not fit the flag: both are bugs in asme.
    pub fn new(long: &str, value: Option<&str>) -> Opt {
        let flag = lookup_long(long).unwrap_or_else(|| panic!("not a docker run flag: --{long}"));
        let fits = match value {
            None => !flag.takes_value,
            Some(v) => flag.takes_value || parse_bool(v).is_some(),
        };
        assert!(fits, "--{long} cannot take {value:?}");
        Opt::canonical(format!("--{long}"), flag, value)
    }

    /// Renders `name` (`-v` or `--volume`) so that pflag reads it back as the same option.
    fn canonical(name: String, flag: &'static Flag, value: Option<&str>) -> Opt {
        let raw = match value {
            None => vec![name],
            Some(v) if flag.takes_value => vec![name, v.to_owned()],
            Some(v) => vec![format!("{name}={v}")],
        };
        Opt {
            flag,
            value: value.map(str::to_owned),
            raw,
        }
    }

    fn is(&self, canonical_long: &str) -> bool {
        canonical(self.flag.long) == canonical_long
    }
}

/// A parsed `docker run` argv: options, then the image, then the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub opts: Vec<Opt>,
    /// Whether the user wrote `--` before the image.
    pub dashdash: bool,
    pub image: String,
    pub command: Vec<String>,
}

impl RunArgs {
    /// Parses what follows `docker run`.
    ///
    /// # Errors
    ///
    /// Where docker would refuse the arguments: an unknown flag, a value flag at the end,
    /// a switch set to a non-boolean, or no image.
    pub fn parse<S: AsRef<str>>(argv: &[S]) -> Result<RunArgs, ArgsError> {
        let mut args = argv.iter().map(AsRef::as_ref);
        let mut opts = Vec::new();
        let mut dashdash = false;
        let image = loop {
            let arg = args.next().ok_or(ArgsError::NoImage)?;
            if arg == "--" {
                dashdash = true;
                break args.next().ok_or(ArgsError::NoImage)?;
            } else if let Some(body) = arg.strip_prefix("--") {
                opts.push(parse_long(arg, body, &mut args)?);
            } else if arg.len() > 1 && arg.starts_with('-') {
                parse_shorts(arg, &mut args, &mut opts)?;
            } else {
                // pflag treats "" and "-" as positional too.
                break arg;
            }
        };
        Ok(RunArgs {
            opts,
            dashdash,
            image: image.to_owned(),
            command: args.map(str::to_owned).collect(),
        })
    }

    /// All values of a flag by long name, in order (e.g. "env", "volume", "mount").
    ///
    /// Hidden aliases count as their canonical flag: `values("network")` includes `--net`.
    pub fn values<'a>(&'a self, long: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        let want = selector(long);
        self.opts
            .iter()
            .filter(move |o| want.is_some_and(|w| o.is(w)))
            .filter_map(|o| o.value.as_deref())
    }

    /// The last value: docker keeps the last one for single-valued flags.
    pub fn last(&self, long: &str) -> Option<&str> {
        self.values(long).last()
    }

    /// A switch's effective value (its last occurrence; `--rm=false` is false); false if absent.
    pub fn flag(&self, long: &str) -> bool {
        let Some(want) = selector(long) else {
            return false;
        };
        self.opts.iter().rfind(|o| o.is(want)).is_some_and(|o| {
            o.value
                .as_deref()
                .is_none_or(|v| parse_bool(v) == Some(true))
        })
    }

    /// The argv again: options from their `raw`, `--` if the user wrote it, image, command.
    ///
    /// `parse(to_argv())` always gives back the same `RunArgs`, and `to_argv` gives back the
    /// parsed argv byte for byte unless it had combined shorts (`-it`), which are split.
    pub fn to_argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = self
            .opts
            .iter()
            .flat_map(|o| o.raw.iter().cloned())
            .collect();
        if self.dashdash {
            argv.push("--".to_owned());
        }
        argv.push(self.image.clone());
        argv.extend(self.command.iter().cloned());
        argv
    }

    /// Removes every occurrence of these long flags (and of their hidden aliases).
    pub fn remove(&mut self, longs: &[&str]) {
        let wanted: Vec<&str> = longs.iter().filter_map(|l| selector(l)).collect();
        self.opts.retain(|o| !wanted.iter().any(|w| o.is(w)));
    }
}

/// Refuses a switch value that pflag's bool flag would refuse.
fn check_bool(flag: &Flag, value: Option<&str>, name: &str) -> Result<(), ArgsError> {
    match value {
        Some(v) if !flag.takes_value && parse_bool(v).is_none() => Err(ArgsError::BadBool {
            flag: name.to_owned(),
            value: v.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// `--name`, `--name=value` or `--name value`, as pflag's `parseLongArg`.
fn parse_long<'a>(
    arg: &'a str,
    body: &'a str,
    rest: &mut impl Iterator<Item = &'a str>,
) -> Result<Opt, ArgsError> {
    let (name, inline) = match body.split_once('=') {
        Some((name, v)) => (name, Some(v)),
        None => (body, None),
    };
    let display = format!("--{name}");
    let flag = lookup_long(name).ok_or_else(|| ArgsError::UnknownFlag(display.clone()))?;
    let mut raw = vec![arg.to_owned()];
    let value = match inline {
        None if flag.takes_value => {
            let v = rest
                .next()
                .ok_or_else(|| ArgsError::MissingValue(display.clone()))?;
            raw.push(v.to_owned());
            Some(v)
        }
        inline => inline,
    };
    check_bool(flag, value, &display)?;
    Ok(Opt {
        flag,
        value: value.map(str::to_owned),
        raw,
    })
}

/// One `-abc` element, as pflag's `parseSingleShortArg`: switches may be combined; a value
/// flag takes the rest of the element (`-p8080:80`, `-e=X` is "X") or else the next one.
fn parse_shorts<'a>(
    arg: &'a str,
    rest: &mut impl Iterator<Item = &'a str>,
    opts: &mut Vec<Opt>,
) -> Result<(), ArgsError> {
    let mut group = &arg[1..];
    let mut parts = Vec::new();
    let mut next = None;
    while let Some(c) = group.chars().next() {
        let display = format!("-{c}");
        let flag = lookup_short(c).ok_or_else(|| ArgsError::UnknownFlag(display.clone()))?;
        let after = &group[c.len_utf8()..];
        let value = if let Some(v) = after.strip_prefix('=').filter(|v| !v.is_empty()) {
            Some(v)
        } else if !flag.takes_value {
            None
        } else if !after.is_empty() {
            Some(after)
        } else {
            let v = rest
                .next()
                .ok_or_else(|| ArgsError::MissingValue(display.clone()))?;
            next = Some(v);
            Some(v)
        };
        // A value ends the group; a switch without one leaves the rest to the next letter.
        group = if value.is_some() { "" } else { after };
        check_bool(flag, value, &display)?;
        parts.push((display, flag, value));
    }
    if let [(_, flag, value)] = parts[..] {
        let raw = std::iter::once(arg)
            .chain(next)
            .map(str::to_owned)
            .collect();
        opts.push(Opt {
            flag,
            value: value.map(str::to_owned),
            raw,
        });
    } else {
        // Split so that the plan can drop `-u` from `-itu root` alone; the rendering differs
        // from what the user typed, but pflag reads it as the same options.
        opts.extend(
            parts
                .into_iter()
                .map(|(name, flag, v)| Opt::canonical(name, flag, v)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// (argv, options as "long" or "long=value", image, command).
    type Strs = &'static [&'static str];
    type Case = (Strs, Strs, &'static str, Strs);

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        (&["-it", "--rm", "img", "sh"], &["interactive", "tty", "rm"], "img", &["sh"]),
        (&["-itd", "img"], &["interactive", "tty", "detach"], "img", &[]),
        (&["--rm", "-v", "/home/me/src:/src", "-w", "/src", "img", "make", "-j4"],
            &["rm", "volume=/home/me/src:/src", "workdir=/src"], "img", &["make", "-j4"]),
        (&["--env=A=1", "-eB=2", "-e=C=3", "img"], &["env=A=1", "env=B=2", "env=C=3"], "img", &[]),
        (&["--mount", "type=bind,src=/a,dst=/b", "img"], &["mount=type=bind,src=/a,dst=/b"],
            "img", &[]),
        (&["--name", "x", "--network", "host", "img", "cmd", "--rm"], &["name=x", "network=host"],
            "img", &["cmd", "--rm"]),
        (&["--", "img", "-x"], &[], "img", &["-x"]),
        (&["--rm", "--", "-img"], &["rm"], "-img", &[]),
        (&["--entrypoint", "/bin/sh", "img", "-c", "echo hi"], &["entrypoint=/bin/sh"], "img",
            &["-c", "echo hi"]),
        (&["--entrypoint=", "img"], &["entrypoint="], "img", &[]),
        (&["--user", "1000:1000", "img", "id"], &["user=1000:1000"], "img", &["id"]),
        (&["-u", "root", "img"], &["user=root"], "img", &[]),
        (&["--init", "--read-only", "img"], &["init", "read-only"], "img", &[]),
        (&["--pull=never", "img"], &["pull=never"], "img", &[]),
        (&["--pull", "never", "img"], &["pull=never"], "img", &[]),
        (&["-p8080:80", "-p", "443:443", "img"], &["publish=8080:80", "publish=443:443"],
            "img", &[]),
        (&["-itv", "/a:/b", "img"], &["interactive", "tty", "volume=/a:/b"], "img", &[]),
        (&["-itvA:B", "img"], &["interactive", "tty", "volume=A:B"], "img", &[]),
        (&["--rm=false", "-i=0", "img"], &["rm=false", "interactive=0"], "img", &[]),
        (&["--cpus", "1.5", "-m", "512m", "img"], &["cpus=1.5", "memory=512m"], "img", &[]),
        (&["--log-opt", "max-size=1m", "img"], &["log-opt=max-size=1m"], "img", &[]),
        (&["-a", "stdin", "-a", "stdout", "img"], &["attach=stdin", "attach=stdout"], "img", &[]),
        (&["--detach-keys=ctrl-x", "img"], &["detach-keys=ctrl-x"], "img", &[]),
        (&["--health-cmd", "curl x", "img"], &["health-cmd=curl x"], "img", &[]),
        (&["--restart=on-failure:3", "img"], &["restart=on-failure:3"], "img", &[]),
        (&["--tmpfs", "/run", "img"], &["tmpfs=/run"], "img", &[]),
        (&["--cap-add", "SYS_ADMIN", "img"], &["cap-add=SYS_ADMIN"], "img", &[]),
        (&["--net=host", "--dns-opt", "ndots:1", "img"], &["net=host", "dns-opt=ndots:1"],
            "img", &[]),
        (&["-e", "-x", "img"], &["env=-x"], "img", &[]),
        (&["-h", "box", "img", "ls", "-la", "--rm"], &["hostname=box"], "img",
            &["ls", "-la", "--rm"]),
        (&["--sysctl", "a.b=1", "img"], &["sysctl=a.b=1"], "img", &[]),
        (&["-", "x"], &[], "-", &["x"]),
    ];

    /// Combined shorts and their split rendering.
    #[rustfmt::skip]
    const COMBINED: &[(&[&str], &[&str])] = &[
        (&["-it", "img"], &["-i", "-t", "img"]),
        (&["-itd", "img"], &["-i", "-t", "-d", "img"]),
        (&["-itv", "/a:/b", "img"], &["-i", "-t", "-v", "/a:/b", "img"]),
        (&["-itvA:B", "img"], &["-i", "-t", "-v", "A:B", "img"]),
        (&["-dv=A:B", "img"], &["-d", "-v", "A:B", "img"]),
        (&["-it=false", "img"], &["-i", "-t=false", "img"]),
    ];

    fn parse(argv: &[&str]) -> RunArgs {
        RunArgs::parse(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    fn parse_words(line: &str) -> RunArgs {
        parse(&line.split(' ').collect::<Vec<_>>())
    }

    #[test]
    fn real_world_command_lines() {
        for &(argv, opts, image, command) in CASES {
            let p = parse(argv);
            let got: Vec<String> = p
                .opts
                .iter()
                .map(|o| match &o.value {
                    Some(v) => format!("{}={v}", o.flag.long),
                    None => o.flag.long.to_owned(),
                })
                .collect();
            assert_eq!(got, opts, "{argv:?}");
            assert_eq!(p.image, image, "{argv:?}");
            assert_eq!(p.command, command, "{argv:?}");
            let before_image = &argv[..argv.len() - command.len()];
            assert_eq!(p.dashdash, before_image.contains(&"--"), "{argv:?}");
        }
    }

    #[test]
    fn round_trip() {
        for &(argv, ..) in CASES {
            let p = parse(argv);
            let again = p.to_argv();
            assert_eq!(RunArgs::parse(&again), Ok(p), "{argv:?}");
            if !COMBINED.iter().any(|(c, _)| c[0] == argv[0]) {
                assert_eq!(again, argv, "{argv:?}");
            }
        }
    }

    #[test]
    fn combined_shorts_split_into_canonical_opts() {
        for &(argv, rendered) in COMBINED {
            assert_eq!(parse(argv).to_argv(), rendered, "{argv:?}");
        }
        let p = parse(&["-itv", "/a:/b", "img"]);
        let raws: Vec<_> = p.opts.iter().map(|o| o.raw.clone()).collect();
        assert_eq!(raws, [vec!["-i"], vec!["-t"], vec!["-v", "/a:/b"]]);
    }

    #[test]
    fn accessors() {
        let mut p = parse_words(
            "-e A=1 --env=B=2 --rm=false --rm -i=false --net bridge --network=host -u 1 -itu 2 \
             --init img",
        );
        assert_eq!(p.values("env").collect::<Vec<_>>(), ["A=1", "B=2"]);
        assert_eq!(p.last("network"), Some("host"));
        assert_eq!(p.values("net").count(), 2);
        assert_eq!(p.last("user"), Some("2"));
        assert_eq!(p.last("workdir"), None);
        assert!(p.flag("rm") && p.flag("interactive") && p.flag("tty") && !p.flag("detach"));
        assert!(!parse(&["-i=false", "img"]).flag("interactive"));
        p.remove(&["user", "init", "net"]);
        assert_eq!(
            p.to_argv(),
            parse_words("-e A=1 --env=B=2 --rm=false --rm -i=false -i -t img").to_argv()
        );
        p.opts.push(Opt::new("user", Some("0:0")));
        p.opts.push(Opt::new("sig-proxy", Some("false")));
        p.opts.push(Opt::new("init", None));
        assert_eq!(
            p.to_argv()[8..],
            ["--user", "0:0", "--sig-proxy=false", "--init", "img"]
        );
    }

    #[test]
    fn errors() {
        let bad = |flag: &str, value: &str| ArgsError::BadBool {
            flag: flag.into(),
            value: value.into(),
        };
        #[rustfmt::skip]
        let cases: &[(&[&str], ArgsError)] = &[
            (&["--bogus", "img"], ArgsError::UnknownFlag("--bogus".into())),
            (&["--bogus=1", "img"], ArgsError::UnknownFlag("--bogus".into())),
            (&["-itX", "img"], ArgsError::UnknownFlag("-X".into())),
            // pflag reads `-i=` as `-i` then an unknown `-=`.
            (&["-i=", "img"], ArgsError::UnknownFlag("-=".into())),
            (&["--name"], ArgsError::MissingValue("--name".into())),
            (&["-it", "-v"], ArgsError::MissingValue("-v".into())),
            (&["-itv"], ArgsError::MissingValue("-v".into())),
            (&[], ArgsError::NoImage),
            (&["--rm", "-it"], ArgsError::NoImage),
            (&["--rm", "--"], ArgsError::NoImage),
            (&["--rm=yes", "img"], bad("--rm", "yes")),
            (&["--rm=", "img"], bad("--rm", "")),
            (&["-t=no", "img"], bad("-t", "no")),
        ];
        for (argv, want) in cases {
            assert_eq!(RunArgs::parse(argv).as_ref(), Err(want), "{argv:?}");
        }
        assert_eq!(
            ArgsError::NoImage.to_string(),
            "\"docker run\" requires at least 1 argument (the image)"
        );
    }

    #[test]
    fn bool_values_follow_go_parse_bool() {
        for v in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(parse(&[&format!("--rm={v}"), "img"]).flag("rm"), "{v}");
        }
        for v in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!parse(&[&format!("--rm={v}"), "img"]).flag("rm"), "{v}");
        }
    }

    /// The docker CLIs on this machine: `docker` on PATH and the distribution's one.
    fn docker_binaries() -> Vec<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let on_path = std::env::split_paths(&path)
            .map(|d| d.join("docker"))
            .find(|b| b.is_file());
        let mut found: Vec<PathBuf> = Vec::new();
        for bin in on_path
            .into_iter()
            .chain([PathBuf::from("/usr/bin/docker")])
        {
            let real = bin.canonicalize().ok();
            if real.is_some() && !found.iter().any(|f| f.canonicalize().ok() == real) {
                found.push(bin);
            }
        }
        found
    }

    /// (long, short, takes_value) of every flag row in `docker run --help`.
    fn help_flags(help: &str) -> Vec<(String, Option<char>, bool)> {
        help.lines()
            .filter_map(|line| {
                let column = line.trim_start();
                // Flag rows are indented 2 or 6; wrapped descriptions (even "-1 for…") deeper.
                if line.len() - column.len() > 6 || !column.starts_with('-') {
                    return None;
                }
                let column = column.split("  ").next()?;
                let (short, column) = match column.strip_prefix('-')?.split_once(", ") {
                    Some((s, rest)) => (s.chars().next(), rest),
                    None => (None, column),
                };
                let mut words = column.split(' ');
                let long = words.next()?.strip_prefix("--")?;
                Some((long.to_owned(), short, words.next().is_some()))
            })
            .collect()
    }

    fn help(bin: &Path, daemon: Option<&str>) -> String {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--help"]);
        if let Some(host) = daemon {
            cmd.env("DOCKER_HOST", host);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("help is UTF-8")
    }

    #[test]
    fn table_matches_installed_docker_cli() {
        let bins = docker_binaries();
        assert!(
            !bins.is_empty(),
            "no docker CLI on PATH or at /usr/bin/docker: install docker.io (apt-get install \
             docker.io)"
        );
        let mut seen = BTreeSet::new();
        let mut wrong = Vec::new();
        for bin in &bins {
            // The CLI hides flags the daemon's OS or API version lacks (--cpu-count,
            // --annotation); with no daemon to ask it shows them all.
            for daemon in [None, Some("unix:///nonexistent/asme-test.sock")] {
                let rows = help_flags(&help(bin, daemon));
                assert!(
                    rows.len() > 90,
                    "{}: only {} flags in --help",
                    bin.display(),
                    rows.len()
                );
                for (long, short, takes_value) in rows {
                    match lookup_long(&long) {
                        Some(f) if f.short == short && f.takes_value == takes_value => {}
                        got => wrong.push(format!(
                            "{}: --{long} short {short:?} takes_value {takes_value}, table {got:?}",
                            bin.display()
                        )),
                    }
                    seen.insert(long);
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "table differs from docker run --help:\n{}",
            wrong.join("\n")
        );
        let hidden: Vec<&str> = ALIASES.iter().map(|(alias, _)| *alias).collect();
        for flag in FLAGS {
            assert!(
                seen.contains(flag.long) || hidden.contains(&flag.long),
                "--{} is in no docker run --help",
                flag.long
            );
        }
        // Hidden flags still parse: the CLI fails on the daemon, not on the flags.
        for bin in &bins {
            let out = Command::new(bin)
                .args([
                    "run",
                    "--net=host",
                    "--net-alias=a",
                    "--dns-opt=ndots:1",
                    "img",
                ])
                .env("DOCKER_HOST", "unix:///nonexistent/asme-test.sock")
                .output()
                .expect("run docker");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("unknown flag"),
                "{}: {stderr}",
                bin.display()
            );
        }
    }
}

//! `asme mount -o ...`: the mount's options, parsed.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use fuser::SessionACL;

/// Parsed `-o` options.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Options {
    pub read_only: bool,
    pub acl: SessionACL,
    pub ttl: Duration,
    pub passthrough: bool,
    pub dev: bool,
    pub suid: bool,
    pub threads: usize,
    pub record_owners: bool,
    /// Watch SOURCE for long caching (`fs::watch`): off with `nowatch` or `timeout=`.
    pub watch: bool,
    /// Take requests over io_uring where the kernel offers it (`fs::ring`): off with
    /// `nouring`.
    pub uring: bool,
    /// How long an io_uring queue looks for its next request before it sleeps (`poll=`).
    pub poll: Duration,
}

const KNOWN_OPTIONS: &str = "ro, rw, allow_other, allow_root, private, timeout=SECONDS, \
                             nowatch, nopassthrough, nouring, poll=MICROSECONDS, dev, \
                             suid, threads=N, record_owners";

pub(super) fn parse_options(given: &[String]) -> Result<Options> {
    let mut o = Options {
        read_only: false,
        // Docker (root) and the container's users must reach the mount.
        acl: SessionACL::All,
        ttl: Duration::from_secs(1),
        passthrough: true,
        dev: false,
        suid: false,
        // One per core, two at least; more only add cold wake-ups (bench/README.md).
        threads: std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2),
        record_owners: false,
        watch: true,
        uring: true,
        // A caller's next request often comes within this: a queue still looking takes it
        // without the wake-up of a sleeping CPU, 1.7x faster small reads for 8 % more server
        // CPU (bench/README.md).
        poll: Duration::from_micros(200),
    };
    for opt in given
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
    {
        match opt.split_once('=') {
            None => match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "allow_other" => o.acl = SessionACL::All,
                "allow_root" => o.acl = SessionACL::RootAndOwner,
                "private" => o.acl = SessionACL::Owner,
                "nopassthrough" => o.passthrough = false,
                "nouring" => o.uring = false,
                "dev" => o.dev = true,
                "suid" => o.suid = true,
                "record_owners" => o.record_owners = true,
                "nowatch" => o.watch = false,
                _ => bail!("unknown mount option {opt:?} (known: {KNOWN_OPTIONS})"),
            },
            Some(("timeout", v)) => {
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| anyhow!("bad mount option {opt:?}: seconds expected"))?;
                o.ttl = Duration::from_secs_f64(secs);
                // A timeout asked for is the timeout used.
                o.watch = false;
            }
            Some(("threads", v)) => {
                o.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| anyhow!("bad mount option {opt:?}: 1 to 256 threads"))?;
            }
            Some(("poll", v)) => {
                let us: u64 = v
                    .parse()
                    .ok()
                    .filter(|us| *us <= 10_000)
                    .ok_or_else(|| anyhow!("bad mount option {opt:?}: 0 to 10000 µs"))?;
                o.poll = Duration::from_micros(us);
            }
            Some(_) => bail!("unknown mount option {opt:?} (known: {KNOWN_OPTIONS})"),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_unknown_ones() {
        let o = parse_options(&["ro,allow_root".into(), "timeout=0.5,threads=3".into()]).unwrap();
        assert!(o.read_only);
        assert_eq!(o.acl, SessionACL::RootAndOwner);
        assert_eq!(o.ttl, Duration::from_millis(500));
        assert_eq!(o.threads, 3);
        let d = parse_options(&[]).unwrap();
        assert_eq!(d.acl, SessionACL::All);
        assert!(d.passthrough && d.uring && !d.read_only && !d.dev && !d.suid);
        assert!(!parse_options(&["nouring".into()]).unwrap().uring);
        assert_eq!(d.poll, Duration::from_micros(200));
        assert_eq!(
            parse_options(&["poll=0".into()]).unwrap().poll,
            Duration::ZERO
        );
        for bad in [
            "nonsense",
            "timeout=x",
            "timeout=-1",
            "threads=0",
            "uid=3",
            "poll=-1",
            "poll=20000",
        ] {
            assert!(parse_options(&[bad.into()]).is_err(), "{bad}");
        }
    }
}

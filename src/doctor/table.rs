//! The doctor's report as a table: one row per check, then what `auto` will use.

use super::Report;

/// The report as a table: one row per check, then the strategy `auto` will use.
pub fn table(report: &Report) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let pass = |b: bool| if b { "ok" } else { "FAIL" };
    let engine = &report.engine;
    let engine_row = match (&engine.error, engine.kind) {
        (Some(error), _) => ("FAIL", error.clone()),
        (None, kind) => (
            "ok",
            format!(
                "client {}, server {} ({})",
                engine.client.as_deref().unwrap_or("?"),
                engine.server.as_deref().unwrap_or("?"),
                kind.map_or("?", |k| k.name())
            ),
        ),
    };
    let fuse = &report.fuse;
    let path = &report.path;
    let security = &report.security;
    let rows = [
        ("engine", engine_row.0, engine_row.1),
        ("kernel", "ok", report.kernel.clone()),
        (
            "path",
            path.idmap.map_or("-", pass),
            match &path.tested_in {
                Some(elsewhere) if *elsewhere != path.path => format!(
                    "{} on {}; not writable by you, so the strategies were tried in {}",
                    path.path.display(),
                    path.fs_type,
                    elsewhere.display()
                ),
                _ => format!(
                    "{} on {}; idmapped mounts: {}",
                    path.path.display(),
                    path.fs_type,
                    path.idmap.map_or("not tried", yes_no)
                ),
            },
        ),
        (
            "fuse",
            yes_no(fuse.openable),
            format!(
                "/dev/fuse: {}; you can open it: {}; passthrough (Linux 6.9+): {}; io_uring: {}",
                if fuse.device { "present" } else { "missing" },
                yes_no(fuse.openable),
                yes_no(fuse.passthrough),
                if fuse.io_uring {
                    "on"
                } else {
                    "off (faster small files on Linux 6.14+: as root, \
                     echo 1 > /sys/module/fuse/parameters/enable_uring)"
                }
            ),
        ),
        (
            "plugin",
            if report.plugin.is_some() { "-" } else { "?" },
            report.plugin.clone().unwrap_or_default(),
        ),
        ("apparmor", yes_no(security.apparmor), String::new()),
        ("selinux", security.selinux, String::new()),
        (
            "seccomp",
            security.seccomp.map_or("-", yes_no),
            match security.seccomp {
                Some(true) => "containers get the engine's default profile".into(),
                _ => String::new(),
            },
        ),
    ];
    let strategies = report.strategies.rows();
    let rows = rows.into_iter().chain(
        strategies
            .into_iter()
            .map(|(name, o)| (name, pass(o.ok), o.detail.clone())),
    );
    let rows: Vec<_> = rows.collect();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let result_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, result, detail) in rows {
        let line = format!("{name:name_width$}  {result:result_width$}  {detail}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&match report.auto.as_str() {
        "none" => "auto: no strategy works here, so asme run will fail\n".to_string(),
        "keep" => "auto: you are root, so asme run keeps the container's own user\n".to_string(),
        "plain" => "auto: this engine stores container ids as other ids, which asme does not \
                    map yet: asme run runs containers as plain docker would\n"
            .to_string(),
        "rootless-fuse" => "auto: on a rootless engine a root container runs as plain docker \
                            would (root is you on disk); other container users get the fuse \
                            strategy (on Podman, its own --userns=keep-id)\n"
            .to_string(),
        "rootless-plain" => "auto: on a rootless engine containers run as plain docker would: \
                             root's writes are yours, other users' subordinate ids (fuse fails \
                             here)\n"
            .to_string(),
        strategy => format!("auto: asme run will use the {strategy} strategy\n"),
    });
    out
}

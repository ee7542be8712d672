//! Strategy `idmap`: the container keeps its user; each bind mount is swapped for an
//! idmapped copy, made by the agent, in which that user's writes are stored as the owner.

use std::os::fd::{AsFd, BorrowedFd};

use super::{Launch, Name, Prepared, Refusal, container_ids, durable, keep::keep_user};
use crate::agent::{self, LeaseError, SourceRefusal};
use crate::fix;
use crate::plugin::options::Mapping;
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::mounts;

pub fn prepare<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
    prepare_on_disk_as(ctx, args, (0, 0))
}

/// Like [`prepare`], on an engine that stores container id C as `base + C` (userns-remap):
/// the mapping names those host-side ids, so the container's writes are the owner's.
pub fn prepare_remapped<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    base: (u32, u32),
) -> Result<Prepared<'a>, Refusal> {
    prepare_on_disk_as(ctx, args, base)
}

fn prepare_on_disk_as<'a>(
    ctx: &'a Context,
    args: &RunArgs,
    base: (u32, u32),
) -> Result<Prepared<'a>, Refusal> {
    let inside = container_ids(ctx, args)?;
    let shifted = |id: u32, base: u32| {
        id.checked_add(base).ok_or_else(|| {
            Refusal::Unavailable(anyhow::anyhow!("container id {id} past the engine's range"))
        })
    };
    // The ids the engine stores the container's as: the same, but on a remapping engine.
    let container = (shifted(inside.0, base.0)?, shifted(inside.1, base.1)?);
    let binds = mounts::bind_mounts(args);
    let mut prepared = keep_user(ctx, args);
    ctx.say(format_args!(
        "strategy idmap: the container keeps uid {}:{}; in {} bind mount(s) its writes are \
         stored as {}",
        container.0,
        container.1,
        binds.len(),
        ctx.owner
    ));
    if binds.is_empty() {
        return Ok(prepared);
    }
    super::refuse_root_owner(ctx, Name::Idmap)?;
    let open = super::open_binds(ctx, args)?;
    let (paths, sources) = (open.paths.as_slice(), open.sources.as_slice());
    for (bind, source) in binds.iter().zip(sources) {
        if ctx.cache.idmap_unsupported(source.as_fd()) {
            return Err(Refusal::Source(format!(
                "{} is on a filesystem that refuses idmapped mounts (remembered)",
                bind.source
            )));
        }
    }
    let borrowed: Vec<_> = sources.iter().map(|s| s.as_fd()).collect();
    let container_ids = (container.0, container.1);
    let lease = match agent::lease(&ctx.engine, &ctx.exe, &borrowed, container_ids, ctx.owner) {
        Ok(lease) => lease,
        Err(LeaseError::Source {
            why,
            message,
            index,
        }) => {
            let source = index.and_then(|i| sources.get(i));
            if let (SourceRefusal::RefusesIdmap, Some(source)) = (why, source) {
                ctx.cache.remember_idmap_unsupported(source.as_fd());
            }
            let what = index
                .and_then(|i| binds.get(i))
                .map_or("a bind mount", |b| &b.source);
            return Err(Refusal::Source(format!("{what}: {message}")));
        }
        Err(LeaseError::Other(e)) => return Err(Refusal::Unavailable(e)),
    };
    for ((bind, path), source) in binds.iter().zip(paths).zip(sources) {
        let Some(example) = root_owned_folder(source.as_fd()) else {
            continue;
        };
        // Suggest giving them back only where the tree is the user's: never a system folder.
        let advice = if fix::may_fix(path, ctx.owner) {
            format!(": give them back with 'asme fix {}'", bind.source)
        } else {
            String::new()
        };
        eprintln!(
            "asme: notice: {} holds folders owned by host root (e.g. {example}); inside they \
             show as nobody and cannot be written, even by root{advice}",
            bind.source
        );
    }
    // The lease above has already shown that these folders take idmapped mounts.
    if let Some(durable) = durable::driver_args(ctx, args, &open, container, Mapping::Auto) {
        drop(lease);
        prepared.args = durable;
        return Ok(prepared);
    }
    prepared.args = mounts::with_sources(args, &binds, &lease.paths);
    prepared.launch = Launch::Exec { lease: Some(lease) };
    Ok(prepared)
}

/// A folder directly in `dir` (or `dir` itself) owned by host root, by name.
fn root_owned_folder(dir: BorrowedFd<'_>) -> Option<String> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let is_root_dir = |st: &rustix::fs::Stat| {
        st.st_uid == 0 && FileType::from_raw_mode(st.st_mode) == FileType::Directory
    };
    if rustix::fs::fstat(dir).is_ok_and(|st| is_root_dir(&st)) {
        return Some(".".into());
    }
    let listing = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut entries = rustix::fs::Dir::read_from(&listing).ok()?;
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        if rustix::fs::statat(&listing, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| is_root_dir(&st))
        {
            return Some(name.to_string_lossy().into_owned());
        }
    }
    None
}

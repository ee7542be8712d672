//! Strategy `keep` (auto, for a root owner only): nothing to map. The container keeps its
//! own user; an owner who is root must not turn an image's non-root USER into root either.

use super::{Launch, Prepared, Refusal};
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::plan::Injection;

pub fn prepare<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
    ctx.say("strategy keep: you are root, so the container keeps its own user");
    Ok(keep_user(ctx, args))
}

/// The container runs as docker would run it (its image's USER or `--user`), with asme as
/// init and nothing else changed: every strategy starts from this.
pub fn keep_user<'a>(ctx: &'a Context, args: &RunArgs) -> Prepared<'a> {
    Prepared {
        args: args.clone(),
        inject: Injection {
            exe: &ctx.exe,
            user: args.last("user").map(str::to_string),
            group_add: Vec::new(),
            account_files: None,
            home_tmpfs: None,
            home_env: None,
        },
        launch: Launch::Exec { lease: None },
    }
}

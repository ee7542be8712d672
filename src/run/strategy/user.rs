//! Strategy `user`: the command runs as the owner, with an account made for it (name, group,
//! writable HOME). Needs nothing from the host, so `auto` ends with it.

use super::{Prepared, Refusal, keep::keep_user};
use crate::owner;
use crate::run::Context;
use crate::run::args::RunArgs;
use crate::run::plan::{self, RunAs};

pub fn prepare<'a>(ctx: &'a Context, args: &RunArgs) -> Result<Prepared<'a>, Refusal> {
    let owner = ctx.owner;
    let mut prepared = keep_user(ctx, args);
    let inject = &mut prepared.inject;
    match plan::run_as(args, owner, &ctx.facts) {
        RunAs::Explicit(user) => {
            ctx.say(format_args!(
                "strategy user: --user {user} given, so the command runs as {user} and what it \
                 writes into bind mounts belongs to that user, not to you ({owner})"
            ));
            inject.user = Some(user);
        }
        RunAs::Owner => {
            let (user_name, group_name) =
                owner::host_names(owner, &owner::host_passwd(), &owner::host_group());
            let account = plan::plan_account(&ctx.facts, owner, &user_name, &group_name);
            let files = ctx
                .cache
                .account_files(&account.accounts.passwd, &account.accounts.group)
                .map_err(Refusal::Fatal)?;
            inject.home_env = plan::image_home_env(args, &ctx.image)
                .filter(|home| *home != account.home)
                .map(|_| account.home.clone());
            ctx.say(format_args!(
                "strategy user: the command runs as {} ({owner}), HOME {}{}",
                account.accounts.user.name,
                account.home,
                if account.home_tmpfs { " (tmpfs)" } else { "" }
            ));
            inject.user = Some(owner.to_string());
            inject.group_add = account.accounts.supplementary_gids;
            inject.account_files = Some(files);
            inject.home_tmpfs = account
                .home_tmpfs
                .then_some((account.home, owner.uid, owner.gid));
        }
    }
    Ok(prepared)
}

//! asme: run containers as me.
//!
//! The binary is a thin CLI (`main.rs`, `cli.rs`) over these modules, each owning one concern.
//! Dependencies run one way, lowest first: `sys`, `exit` → `identity`, `owner`, `cache`,
//! `init` → `engine`, `idmap`, `fs`, `chown` → `plugin`, `agent` → `fix` → `run` → `doctor`.
//! `cli_plugin` (`docker asme`) and `manual` (completions, man pages) sit beside `cli`.

pub mod agent;
pub mod cache;
pub mod chown;
pub mod cli;
pub mod cli_plugin;
pub mod doctor;
pub mod engine;
pub mod exit;
pub mod fix;
pub mod fs;
pub mod identity;
pub mod idmap;
pub mod init;
pub mod manual;
pub mod owner;
pub mod plugin;
pub mod proxy;
pub mod run;
pub mod sys;

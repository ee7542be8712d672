//! asme: run containers as me.
//!
//! The binary is a thin CLI (`main.rs`, `cli.rs`) over these modules, each owning one concern.

pub mod agent;
pub mod cli;
pub mod doctor;
pub mod fix;
pub mod fs;
pub mod identity;
pub mod idmap;
pub mod init;
pub mod owner;
pub mod run;
pub mod sys;

//! asme: run containers as me.
//!
//! The binary is a thin CLI (`main.rs`, `cli.rs`) over these modules, each owning one concern.

pub mod cli;
pub mod identity;
pub mod init;
pub mod owner;
pub mod run;
pub mod sys;

//! The asme volume driver (a managed Docker plugin).

pub mod http;

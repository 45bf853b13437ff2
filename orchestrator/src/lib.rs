//! IronClaw: run untrusted commands in just-in-time microVMs.
//!
//! [`vm`] is the heart (config, backends, vsock, spawn/destroy); [`agent`] is
//! the host side of the guest protocol; [`boot`] finds the kernel and builds
//! the initramfs a VM boots; [`userland`] builds the root file system images
//! a VM can switch into; [`doctor`] tells what this host can run.
//!
//! The `ironclaw` command line is not part of the library: it lives in the
//! binary (`src/main.rs`, `src/cli/`), which is the only place that knows
//! about flags, clap or `anyhow`.

pub mod agent;
pub mod boot;
pub mod cache;
pub mod doctor;
pub mod listen;
pub mod service;
pub mod userland;
pub mod vm;

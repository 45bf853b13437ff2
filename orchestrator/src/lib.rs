//! IronClaw: run untrusted commands in just-in-time microVMs.
//!
//! [`vm`] is the heart (config, backends, vsock, spawn/destroy); [`agent`] is
//! the host side of the guest protocol; [`image`] builds the guest's boot
//! image; [`doctor`] tells what this host can run.

pub mod agent;
pub mod bench;
pub mod doctor;
pub mod image;
pub mod pool_server;
pub mod vm;

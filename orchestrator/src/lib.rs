//! IronClaw: run untrusted commands in just-in-time microVMs.
//!
//! [`vm`] is the heart (config, backends, vsock, spawn/destroy); [`agent`] is
//! the host side of the guest protocol; [`image`] builds the guest's boot
//! image; [`rootfs`] builds the guest's userland images; [`doctor`] tells
//! what this host can run.

pub mod agent;
pub mod bench;
pub mod bench_userland;
pub mod cache;
pub mod doctor;
pub mod image;
pub mod image_cli;
pub mod pool_server;
pub mod rootfs;
pub mod vm;

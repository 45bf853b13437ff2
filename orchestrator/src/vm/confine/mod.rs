//! Confinement of the VMM processes: everything that stands between a
//! compromised VMM and the host.
//!
//! - [`prepare`]: what a backend runs before starting anything: the audit
//!   log, the jail uid, the runtime directory's mode, the boot files to
//!   bind-mount, the VM's cgroup ([`prepare::Confinement`]).
//! - [`jail`]: the forked child's steps before `exec` (namespaces, minimal
//!   root, uid, `no_new_privs`), the reaper, the report channel, and reading
//!   back what confines a running process.
//! - [`seccomp`]: default-deny filters, one allowlist file per process kind,
//!   their compilation, and the audit log fed by user notifications.
//! - [`cgroup`]: one cgroup per VM with its limits, v1 or v2.
//! - [`perm`] and [`fd_pass`]: permission checks by mode bits and passing a
//!   descriptor over a unix socket, shared with the rest of `vm`.
//!
//! `vm::jail`, `vm::seccomp` and `vm::cgroup` are re-exports of these.

pub mod cgroup;
pub mod fd_pass;
pub mod jail;
pub mod perm;
pub mod prepare;
pub mod seccomp;

//! Which backend runs a VM: every backend is registered here, and here
//! `auto` chooses by what the host offers and what the operation needs.
//! Adding a backend = its module plus a line in [`select_for`].

use super::backend::{Capabilities, Hypervisor};
use super::config::{AccelChoice, BackendChoice};
use super::VmError;

/// The backend for `choice`, whatever the accelerator ([`select_for`] with
/// `auto`).
pub fn select(choice: BackendChoice) -> Result<Box<dyn Hypervisor>, VmError> {
    select_for(choice, AccelChoice::Auto)
}

/// Whether `auto` takes Firecracker for a VM asking for `accel`: Firecracker
/// has no emulator, so never with an explicit TCG request; otherwise when it
/// is installed and KVM is really usable.
pub fn auto_prefers_firecracker(accel: AccelChoice) -> bool {
    accel != AccelChoice::Tcg
        && super::firecracker::find_binary().is_some_and(|p| p.is_file())
        && super::accel::probe_kvm().usable
}

/// The backend for `choice` and the accelerator the VM asks for. `auto`
/// takes Firecracker when [`auto_prefers_firecracker`] and its options
/// (jailer policy) are usable, QEMU otherwise. An explicit Firecracker with
/// TCG is refused ([`super::config::check_backend_accel`]).
pub fn select_for(
    choice: BackendChoice,
    accel: AccelChoice,
) -> Result<Box<dyn Hypervisor>, VmError> {
    super::config::check_backend_accel(choice, accel)?;
    match choice {
        BackendChoice::Qemu => Ok(Box::new(super::qemu::QemuBackend::from_env()?)),
        BackendChoice::Firecracker => {
            Ok(Box::new(super::firecracker::FirecrackerBackend::from_env()?))
        }
        BackendChoice::Auto => {
            if auto_prefers_firecracker(accel) {
                match super::firecracker::FirecrackerBackend::from_env() {
                    Ok(fc) => return Ok(Box::new(fc)),
                    // E.g. no jailer configured for a root orchestrator: QEMU,
                    // which IronClaw confines itself, is the safe choice.
                    Err(e) => tracing::warn!("not using Firecracker: {e}; using QEMU"),
                }
            }
            Ok(Box::new(super::qemu::QemuBackend::from_env()?))
        }
    }
}

/// [`select_for`], for an operation that `needs` some capabilities: `auto`
/// takes QEMU when the backend it would pick lacks them (QEMU has them all);
/// an explicit choice that lacks them is refused, saying what is missing.
pub fn select_capable(
    choice: BackendChoice,
    accel: AccelChoice,
    needs: Capabilities,
) -> Result<Box<dyn Hypervisor>, VmError> {
    let chosen = select_for(choice, accel)?;
    let has = chosen.capabilities();
    if !needs.snapshots || has.snapshots {
        return Ok(chosen);
    }
    match choice {
        BackendChoice::Auto => select_for(BackendChoice::Qemu, accel),
        _ => Err(VmError::Unsupported(format!(
            "the {} backend cannot snapshot in its current mode, so it cannot make \
             prototypes; boot cold (--cold) or choose another backend",
            chosen.kind()
        ))),
    }
}

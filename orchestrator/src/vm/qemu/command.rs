//! The QEMU command line: the bare machine, then a whole VM's (sandbox,
//! console, QMP socket, guest channel, boot files, snapshot to restore).

use std::path::PathBuf;
use std::process::Command;

use ironclaw_protocol::AGENT_SERIAL_PORT_NAME;

use super::{LaunchOptions, QemuBackend, Transport, SERIAL_SOCKET};
use crate::vm::accel::Accel;
use crate::vm::cmdline;
use crate::vm::config::VmConfig;
use crate::vm::runtime::RuntimeDir;

/// The fd number a restored QEMU reads its migration stream from.
pub(super) const INCOMING_FD: i32 = 3;

/// What backs guest RAM. Every choice is a memory backend with the id `mem`,
/// so a snapshot's RAM block has one name whichever VM restores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMemory {
    /// A shared memfd: what vhost-user devices need (vsock VMs).
    Memfd,
    /// Anonymous private memory (a snapshottable VM with copied memory).
    Anonymous,
    /// A prototype's: a file QEMU maps shared, so that once the VM is stopped
    /// the file holds its RAM; the migration stream leaves that RAM out
    /// (`x-ignore-shared`) and the file is kept beside it.
    SharedFile(PathBuf),
    /// A clone's: the prototype's memory file opened read-only and mapped
    /// private (`readonly=on,rom=off,share=off`): every clone shares the
    /// prototype's pages in the host's page cache until it writes one, which
    /// the kernel then copies for that clone alone. Needs QEMU ≥ 8.2.
    PrivateFile(PathBuf),
    /// A fork's (a VM restored from a live snapshot): the RAM region of the
    /// snapshot file at `offset`, mapped the same way as a clone's
    /// ([`super::mapped_ram`]).
    SnapshotRam { path: PathBuf, offset: u64 },
}

impl GuestMemory {
    /// The `-object` that backs guest RAM.
    fn object(&self, mib: u32) -> String {
        let size = format!("id=mem,size={mib}M");
        match self {
            GuestMemory::Memfd => format!("memory-backend-memfd,{size},share=on"),
            GuestMemory::Anonymous => format!("memory-backend-ram,{size}"),
            GuestMemory::SharedFile(path) => format!(
                "memory-backend-file,{size},mem-path={},share=on",
                path.display()
            ),
            GuestMemory::PrivateFile(path) => format!(
                "memory-backend-file,{size},mem-path={},share=off,readonly=on,rom=off",
                path.display()
            ),
            GuestMemory::SnapshotRam { path, offset } => format!(
                "memory-backend-file,{size},mem-path={},offset={offset},share=off,readonly=on,rom=off",
                path.display()
            ),
        }
    }
}

/// The accelerator and the guest CPU model. Under TCG, `qemu64` with ARAT
/// ("the APIC timer always runs", true of QEMU's emulated one): without it
/// the guest kernel keeps its tick periodic, 100 interrupts a second in every
/// idle VM, for want of a broadcast timer to stand in during deep idle
/// (docs/decisions.md).
pub fn accel_args(accel: Accel) -> [&'static str; 4] {
    match accel {
        Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg => ["-accel", "tcg", "-cpu", "qemu64,+arat"],
    }
}

impl QemuBackend {
    /// QEMU with the machine IronClaw runs — microvm, accelerator, vCPUs,
    /// memory, no default devices and no network device — and nothing else:
    /// no console, channel, kernel or confinement. `memory` backs guest RAM.
    /// The benchmark's bare-QEMU reference starts from this too, so it runs
    /// the same machine.
    pub fn machine_command(
        &self,
        config: &VmConfig,
        accel: Accel,
        memory: &GuestMemory,
    ) -> Command {
        let mem = config.memory_mib;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-M", "microvm,pit=on,acpi=on,memory-backend=mem"]);
        cmd.args(accel_args(accel));
        cmd.args(["-m", &format!("{mem}M"), "-smp", &config.vcpus.to_string()]);
        cmd.arg("-object").arg(memory.object(mem));
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        // No network device, by construction: no -netdev is ever passed and the
        // default NIC is switched off explicitly.
        cmd.args(["-nic", "none"]);
        cmd
    }

    /// The whole QEMU command line of a VM: [`Self::machine_command`] plus
    /// its sandbox, console, QMP socket, guest channel and boot files
    /// (public for the benchmark's bare-QEMU reference).
    pub fn qemu_command(
        &self,
        config: &VmConfig,
        accel: Accel,
        dir: &RuntimeDir,
        opts: &LaunchOptions,
    ) -> Command {
        let mut cmd = self.machine_command(config, accel, &opts.memory);
        cmd.arg("-name").arg(format!("ironclaw-{}", config.id));
        // QEMU's own seccomp sandbox, stacked on the allowlist installed before
        // exec (vm::seccomp): it also refuses obsolete calls, privilege changes,
        // spawning processes and resource-control calls from inside QEMU.
        cmd.args([
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
        // Appended to, so the orchestrator can empty it (vm::console keeps it bounded).
        cmd.arg("-chardev").arg(format!(
            "file,id=console,path={},append=on",
            dir.file("console.log").display()
        ));
        cmd.args(["-serial", "chardev:console"]);
        cmd.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            dir.file("qmp.sock").display()
        ));
        cmd.arg("-kernel").arg(&config.kernel);
        cmd.arg("-initrd").arg(&config.initramfs);
        let serial = opts.transport == Transport::Serial;
        cmd.arg("-append").arg(if opts.incoming.is_some() {
            cmdline::qemu_unmeasured(config, serial)
        } else {
            cmdline::qemu(config, serial)
        });
        match opts.transport {
            Transport::Vsock => {
                cmd.arg("-chardev").arg(format!(
                    "socket,id=vsock0,path={}",
                    dir.file("vhost-vsock.sock").display()
                ));
                // The guest CID is the device process's setting (--guest-cid), not QEMU's.
                cmd.args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
            }
            Transport::Serial => {
                cmd.args(["-device", "virtio-serial-device"]);
                cmd.arg("-chardev").arg(format!(
                    "socket,id=agent0,path={},server=on,wait=off",
                    dir.file(SERIAL_SOCKET).display()
                ));
                cmd.arg("-device").arg(format!(
                    "virtserialport,chardev=agent0,name={AGENT_SERIAL_PORT_NAME}"
                ));
            }
        }
        if opts.incoming.is_some() {
            // Loaded over QMP (`load_incoming`), after the capabilities are set.
            cmd.args(["-incoming", "defer"]);
        }
        if let Some(rootfs) = &config.rootfs {
            cmd.arg("-drive").arg(format!(
                "id=rootfs,file={},format=raw,if=none,readonly=on",
                rootfs.display()
            ));
            cmd.args(["-device", "virtio-blk-device,drive=rootfs"]);
        }
        cmd
    }
}

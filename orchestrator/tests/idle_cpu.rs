//! An idle VM costs the host almost no CPU. A prototype clone's agent used to
//! spin on its virtio-serial port (a hang-up seen once left the port "ready"
//! forever), keeping QEMU at a whole host core for the VM's life; a cold VM
//! (vsock) in the same test is the reference.

mod common;

use std::time::{Duration, Instant};

use common::{guest_number, runtime, sh, text};
use ironclaw_orchestrator::vm::{self, prototype, VmHandle};

/// The idle window over which QEMU's CPU time is measured.
const WINDOW: Duration = Duration::from_secs(3);

/// CPU time (user + system) of `pid` so far, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    // Fields after the command name (which may hold spaces) start at `state`.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn qemu_pid(vm: &VmHandle) -> u32 {
    vm.confinement()
        .into_iter()
        .find(|c| c.process.starts_with("qemu"))
        .map(|c| c.pid)
        .expect("the VM has a QEMU process")
}

/// The share of one host core QEMU used while the VM sat idle for `WINDOW`.
fn idle_cpu_share(vm: &VmHandle) -> f64 {
    // A command first, so the session is up as it is for a pooled clone.
    assert_eq!(text(&sh(vm, "echo up").stdout), "up\n");
    std::thread::sleep(Duration::from_millis(500));
    let pid = qemu_pid(vm);
    let (c0, t0) = (cpu_time(pid), Instant::now());
    std::thread::sleep(WINDOW);
    let used = cpu_time(pid) - c0;
    used.as_secs_f64() / t0.elapsed().as_secs_f64()
}

/// The default machine's config (named `config_id`) and a clone `clone_id`
/// of its prototype.
fn restore_clone(config_id: &str, clone_id: &str) -> (vm::VmConfig, VmHandle) {
    runtime();
    let cfg = vm::default_config(config_id).expect("default config (run scripts/setup.sh first)");
    let clone = runtime()
        .block_on(async {
            let proto = prototype::ensure(&cfg, &|_| {}).await?;
            prototype::restore(&proto, clone_id, &cfg).await
        })
        .expect("restoring a clone");
    (cfg, clone)
}

#[test]
fn an_idle_clone_does_not_burn_a_host_core() {
    let (cfg, clone) = restore_clone("idle", "idle-clone");
    let clone_share = idle_cpu_share(&clone);
    runtime().block_on(vm::destroy_vm(clone)).unwrap();

    let cold = runtime()
        .block_on(vm::spawn_vm_with_config("idle-cold", &cfg))
        .expect("booting a cold VM");
    let cold_share = idle_cpu_share(&cold);
    runtime().block_on(vm::destroy_vm(cold)).unwrap();

    eprintln!(
        "idle QEMU over {WINDOW:?}: clone {:.1}% of a core, cold VM {:.1}%",
        clone_share * 100.0,
        cold_share * 100.0
    );
    // A spinning agent keeps a TCG vCPU, and so QEMU, at ~100% of a core; an
    // idle guest's timer ticks cost a few percent.
    assert!(
        clone_share < 0.30 && clone_share < cold_share + 0.20,
        "an idle clone's QEMU used {:.0}% of a core (a cold VM: {:.0}%): something in the guest is busy",
        clone_share * 100.0,
        cold_share * 100.0
    );
}

/// Local timer interrupts the guest took, from its /proc/interrupts.
fn guest_timer_interrupts(vm: &VmHandle) -> u64 {
    let script = "grep '^ *LOC:' /proc/interrupts";
    guest_number(vm, script, 1, "LOC line in the guest's /proc/interrupts")
}

/// An idle guest stops its timer tick. With a periodic tick (what the guest
/// kernel falls back to when the CPU model lacks ARAT: microvm has no
/// broadcast timer) every idle VM takes 100 interrupts a second, each
/// emulated, which is most of an idle TCG VM's host CPU.
#[test]
fn an_idle_clones_guest_runs_tickless() {
    let (_, clone) = restore_clone("tickless", "tickless-clone");
    let before = guest_timer_interrupts(&clone);
    std::thread::sleep(Duration::from_secs(2));
    let during = guest_timer_interrupts(&clone) - before;
    let modes = text(&sh(&clone, "grep -E 'hres_active|nohz_mode' /proc/timer_list").stdout);
    runtime().block_on(vm::destroy_vm(clone)).unwrap();
    // A periodic tick would be 200 here; the two execs and a timer or two
    // of the guest's own take a few.
    assert!(
        during < 50,
        "the idle guest took {during} timer interrupts in 2 s (its tick did not stop): {modes}"
    );
}

//! `ironclaw prototype build|list|rm`: the snapshots VMs are cloned from.

use ironclaw_orchestrator::vm;

use super::field_flags::Refusal;
use super::machine::{self, ImageArgs, MachineArgs};

#[derive(clap::Subcommand)]
pub enum PrototypeCmd {
    /// Build (or check) the prototype for the given machine shape.
    Build {
        #[command(flatten)]
        machine: MachineArgs,
        #[command(flatten)]
        image: ImageArgs,
    },
    /// List the prototypes in the cache.
    List,
    /// Remove prototypes whose key starts with KEY.
    Rm { key: String },
}

pub async fn prototype_command(cmd: PrototypeCmd) -> anyhow::Result<i32> {
    match cmd {
        PrototypeCmd::Build { machine, image } => {
            let config = machine::vm_config("prototype", &machine, Some(&image), None).await?;
            let progress = |msg: &str| eprintln!("ironclaw: {msg}");
            let p = vm::prototype::ensure(&config, &progress).await?;
            println!("{}\t{}", p.meta.key, p.dir.display());
        }
        PrototypeCmd::List => {
            println!(
                "{:<22} {:<11} {:>5} {:>7} {:>5} {:>9} {:>8}  kernel",
                "key", "backend", "vcpus", "mem_mib", "accel", "disk_mib", "boot_ms"
            );
            for p in vm::prototype::list() {
                let m = &p.meta;
                println!(
                    "{:<22} {:<11} {:>5} {:>7} {:>5} {:>9} {:>8}  {}",
                    m.key,
                    m.backend.to_string(),
                    m.vcpus,
                    m.memory_mib,
                    m.accel,
                    p.disk_bytes() >> 20,
                    m.boot_ms,
                    m.kernel.display()
                );
            }
        }
        PrototypeCmd::Rm { key } => {
            let removed = vm::prototype::remove(&key)?;
            if removed.is_empty() {
                return Err(Refusal(format!(
                    "no prototype key starts with {key:?} (see `ironclaw prototype list`)"
                ))
                .into());
            }
            for k in removed {
                println!("removed {k}");
            }
        }
    }
    Ok(0)
}

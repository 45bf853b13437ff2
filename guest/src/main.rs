//! `ironclaw-guest`: the `/init` of every IronClaw microVM.
//!
//! As PID 1 it sets the guest up ([`init`]), then forks the agent ([`agent`])
//! and stays behind as the reaper of orphaned processes, restarting the agent
//! should it ever exit. Outside a VM (`--listen-unix PATH`) it serves the same
//! protocol on a unix socket, which the protocol tests use.

mod agent;
mod exec;
mod fdstream;
mod files;
mod init;
mod pgroup;
mod reseed;
mod rootfs;
mod serial;
mod spawn;
mod stream;

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        init::run_as_pid1();
    }
    match args.get(1).map(String::as_str) {
        Some("--listen-unix") if args.len() == 3 => {
            let path = PathBuf::from(&args[2]);
            if let Err(e) = agent::serve(agent::Listen::Unix(path)) {
                eprintln!("ironclaw-guest: {e}");
                std::process::exit(1);
            }
        }
        Some("--version") => println!("ironclaw-guest {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "usage: ironclaw-guest --listen-unix PATH\n\
                 (as PID 1 inside an IronClaw VM it needs no arguments)"
            );
            std::process::exit(2);
        }
    }
}

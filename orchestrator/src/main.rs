//! `ironclaw`: the command line, a thin layer over the library
//! `ironclaw_orchestrator`. The subcommands live in [`cli`].

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod cli;

use cli::{field_flags, Cli, EXIT_IRONCLAW_ERROR};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose {
        "ironclaw_orchestrator=debug,ironclaw=debug"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IRONCLAW_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ironclaw: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_IRONCLAW_ERROR);
        }
    };
    let config_file = cli.command.uses_config_file();
    let code = rt.block_on(async {
        cli.command.execute(cli.verbose).await.unwrap_or_else(|e| {
            eprintln!("ironclaw: {}", field_flags::render(&e, config_file));
            EXIT_IRONCLAW_ERROR as i32
        })
    });
    // Exit without waiting for the blocking stdin reader thread.
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

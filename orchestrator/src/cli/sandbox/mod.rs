//! `ironclaw sandbox …` and `ironclaw snapshot …`: the client of
//! `ironclaw serve`. Each subcommand is one or a few calls of the REST API
//! (over the service's unix socket, or TCP with `--host` and
//! `--token-file`); errors of the service are printed as
//! `ironclaw: <message> (<code>)` with exit code 125.

pub mod client;
mod cp;
mod exec;
mod show;
pub mod snapshot;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail};
use hyper::Method;
use serde_json::json;

use super::field_flags::Refusal;
use client::{sandbox_path, Client};

/// Where the service is: the flags of `ironclaw sandbox` and `ironclaw snapshot`.
#[derive(clap::Args)]
pub struct Connection {
    /// The service: http://ADDR:PORT (with --token-file) or unix:PATH
    /// [default: $IRONCLAW_HOST, else the unix socket <runtime root>/ironclaw.sock].
    #[arg(long, global = true, value_name = "URL")]
    pub host: Option<String>,
    /// File whose first line (not a `#` comment) is the bearer token for a
    /// TCP service [default: $IRONCLAW_TOKEN_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl Connection {
    pub fn client(self) -> anyhow::Result<Client> {
        Client::new(self.host, self.token_file)
    }
}

#[derive(clap::Args)]
pub struct SandboxArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: SandboxCmd,
}

#[derive(clap::Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox (fresh, or --from a snapshot); prints its id (alone, for scripts).
    ///
    /// Example: id=$(ironclaw sandbox create --timeout 10m)
    Create(CreateArgs),
    /// Run a command in a sandbox, its output streamed; exits with its exit code.
    ///
    /// Example: ironclaw sandbox exec $id -- python3 -c 'print(6*7)'
    Exec(exec::ExecArgs),
    /// Copy a file (or with -r a directory) between here and a sandbox; one side is ID:/path.
    ///
    /// Example: ironclaw sandbox cp data.csv $id:/work/ && ironclaw sandbox cp -r $id:/work/out ./out
    Cp(cp::CpArgs),
    /// List your sandboxes, running and paused.
    Ls {
        /// Print the ids only.
        #[arg(short, long)]
        quiet: bool,
        /// Print the service's JSON.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
    },
    /// Print a sandbox as JSON.
    Inspect { id: String },
    /// Destroy sandboxes.
    Rm {
        #[arg(required_unless_present = "all", value_name = "ID")]
        ids: Vec<String>,
        /// Destroy all your sandboxes.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Print the output of a command started with `exec -d` (from its start).
    Logs {
        id: String,
        command_id: String,
        /// Follow the output until the command ends; then exit with its exit code.
        #[arg(short, long)]
        follow: bool,
    },
    /// Set a sandbox's remaining lifetime, counted from now.
    ///
    /// Example: ironclaw sandbox timeout $id 1h
    Timeout {
        id: String,
        /// 90 (seconds), 90s, 10m or 1h.
        #[arg(value_parser = parse_secs)]
        duration: u64,
    },
    /// Snapshot a running sandbox (files, memory, processes); prints the snapshot's id.
    ///
    /// Example: snap=$(ironclaw sandbox snapshot $id --name after-setup); ironclaw sandbox create --from $snap
    Snapshot(snapshot::TakeArgs),
    /// Snapshot a sandbox and make new sandboxes from it; prints their ids, one per line.
    ///
    /// Example: ironclaw sandbox fork $id --count 3
    Fork(snapshot::ForkArgs),
    /// Pause a sandbox: memory and files to disk, no VM, its lifetime stopped.
    Pause(snapshot::StateArgs),
    /// Resume a paused sandbox under its id, with its processes.
    Resume(snapshot::StateArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Userland image: a name from `ironclaw image list`, `default` or `none`.
    #[arg(long)]
    pub image: Option<String>,
    /// Virtual CPUs [default: the service's].
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB [default: the service's].
    #[arg(long, value_name = "MIB")]
    pub mem: Option<u32>,
    /// Environment of every command in the sandbox (repeatable).
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of every command [default: /root].
    #[arg(long, short = 'w', value_name = "DIR")]
    pub cwd: Option<String>,
    /// A label, shown by inspect and ls --json (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Lifetime (90, 90s, 10m, 1h); the service destroys the sandbox after it
    /// [default: the service's].
    #[arg(long, value_name = "DUR", value_parser = parse_secs)]
    pub timeout: Option<u64>,
    /// Destroy the sandbox after this long without a request.
    #[arg(long, value_name = "DUR", value_parser = parse_secs)]
    pub idle_timeout: Option<u64>,
    /// Start from a snapshot (its id or name, see `ironclaw snapshot ls`):
    /// its files, memory and running processes, its image and shape.
    #[arg(long, value_name = "SNAPSHOT", conflicts_with_all = ["image", "vcpus", "mem"])]
    pub from: Option<String>,
}

/// Runs a sandbox subcommand; returns the exit code. Every error is
/// printed as it is (the service's own messages say what to change).
pub async fn sandbox_command(args: SandboxArgs) -> anyhow::Result<i32> {
    as_is(run(args).await)
}

/// Runs a snapshot subcommand; returns the exit code (errors as for `sandbox`).
pub async fn snapshot_command(args: snapshot::SnapshotArgs) -> anyhow::Result<i32> {
    as_is(snapshot::snapshot_command(args).await)
}

fn as_is(result: anyhow::Result<i32>) -> anyhow::Result<i32> {
    result.map_err(|e| Refusal(format!("{e:#}")).into())
}

async fn run(args: SandboxArgs) -> anyhow::Result<i32> {
    let client = args.conn.client()?;
    match args.command {
        SandboxCmd::Create(a) => create(&client, a).await,
        SandboxCmd::Exec(a) => exec::exec(&client, a).await,
        SandboxCmd::Cp(a) => cp::cp(&client, a).await,
        SandboxCmd::Ls { quiet, json } => {
            let list = client.json(Method::GET, "/v1/sandboxes", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows = list["sandboxes"].as_array().cloned().unwrap_or_default();
                print!("{}", show::table(&rows, quiet));
            }
            Ok(0)
        }
        SandboxCmd::Inspect { id } => {
            let info = client
                .json(Method::GET, &sandbox_path(&id, ""), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(0)
        }
        SandboxCmd::Rm { ids, all } => rm(&client, ids, all).await,
        SandboxCmd::Logs {
            id,
            command_id,
            follow,
        } => exec::logs(&client, &id, &command_id, follow).await,
        SandboxCmd::Timeout { id, duration } => {
            let body = json!({ "timeout_s": duration });
            client
                .json(Method::POST, &sandbox_path(&id, "/timeout"), Some(&body))
                .await?;
            Ok(0)
        }
        SandboxCmd::Snapshot(a) => snapshot::take(&client, a).await,
        SandboxCmd::Fork(a) => snapshot::fork(&client, a).await,
        SandboxCmd::Pause(a) => snapshot::set_state(&client, a, false).await,
        SandboxCmd::Resume(a) => snapshot::set_state(&client, a, true).await,
    }
}

async fn create(client: &Client, a: CreateArgs) -> anyhow::Result<i32> {
    let body = json!({
        "image": a.image,
        "vcpus": a.vcpus,
        "memory_mib": a.mem,
        "env": key_values("--env", &a.env)?,
        "cwd": a.cwd,
        "labels": key_values("--label", &a.label)?,
        "timeout_s": a.timeout,
        "idle_timeout_s": a.idle_timeout,
        "from_snapshot": a.from,
    });
    let info = client
        .json(Method::POST, "/v1/sandboxes", Some(&body))
        .await?;
    let id = info["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the service's answer has no id: {info}"))?;
    println!("{id}");
    Ok(0)
}

/// Destroys each of `ids` (all of the caller's with `all`); every failure
/// is printed, and any makes the exit code 125.
async fn rm(client: &Client, mut ids: Vec<String>, all: bool) -> anyhow::Result<i32> {
    if all {
        let list = client.json(Method::GET, "/v1/sandboxes", None).await?;
        ids = list["sandboxes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect();
    }
    let paths: Vec<(String, String)> = ids
        .into_iter()
        .map(|id| (sandbox_path(&id, ""), id))
        .collect();
    remove_each(client, &paths).await
}

/// DELETEs each `(path, what)`; every failure is printed with `what`, and
/// any makes the exit code 125.
async fn remove_each(client: &Client, paths: &[(String, String)]) -> anyhow::Result<i32> {
    let mut failed = 0;
    for (path, what) in paths {
        if let Err(e) = client.json(Method::DELETE, path, None).await {
            eprintln!("ironclaw: {what}: {e:#}");
            failed += 1;
        }
    }
    Ok(if failed > 0 {
        super::EXIT_IRONCLAW_ERROR as i32
    } else {
        0
    })
}

/// `K=V` arguments as a map.
pub fn key_values(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for kv in items {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("{flag} {kv:?} is not of the form K=V"))?;
        if k.is_empty() {
            bail!("{flag} {kv:?} has an empty name");
        }
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

/// A duration in seconds: `90`, `1.5`, `90s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: the unit must be s, m or h (e.g. 90s, 10m, 1h)"
            ))
        }
    };
    match num.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n * scale),
        _ => Err(format!("{s:?} is not a duration like 90, 90s, 10m or 1h")),
    }
}

/// A duration in whole seconds (rounded up).
pub fn parse_secs(s: &str) -> Result<u64, String> {
    parse_duration(s).map(|d| d.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90.0));
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("10m"), Ok(600.0));
        assert_eq!(parse_duration("1h"), Ok(3600.0));
        assert_eq!(parse_duration("0.5"), Ok(0.5));
        assert_eq!(parse_secs("0.5"), Ok(1));
        for bad in ["", "0", "-1", "10d", "m", "1hh", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs() {
        let m = key_values("--env", &["A=1".into(), "B=x=y".into(), "C=".into()]).unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "x=y");
        assert_eq!(m["C"], "");
        assert!(key_values("--env", &["A".into()]).is_err());
        assert!(key_values("--env", &["=1".into()]).is_err());
    }
}

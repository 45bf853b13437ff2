//! Branching sandboxes from the command line: `ironclaw sandbox
//! snapshot|fork|pause|resume` and `ironclaw snapshot ls|inspect|rm`, each
//! a call or two of the REST API (`/v1/sandboxes/{id}/snapshots`, `…/fork`,
//! `…/pause`, `…/resume`, `/v1/snapshots`). Ids go to stdout (for scripts),
//! what else is worth knowing to stderr; `--json` prints the service's answer.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use hyper::Method;
use serde_json::{json, Value};

use super::client::{sandbox_path, snapshot_path, Client};
use super::show::{ago, ids, mib, render, text};
use super::{key_values, parse_secs, Connection};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: SnapshotCmd,
}

#[derive(clap::Subcommand)]
pub enum SnapshotCmd {
    /// List your snapshots (paused sandboxes are listed by `ironclaw sandbox ls`).
    Ls {
        /// Print the ids only.
        #[arg(short, long)]
        quiet: bool,
        /// Print the service's JSON.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
    },
    /// Print a snapshot (id or name) as JSON.
    Inspect { id: String },
    /// Remove snapshots (ids or names); sandboxes made from them are not affected.
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

/// `ironclaw sandbox snapshot`.
#[derive(clap::Args)]
pub struct TakeArgs {
    /// The sandbox (it runs on, paused only while its state is written).
    pub id: String,
    /// A name to create sandboxes from it by (`create --from NAME`), besides its id.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the service's JSON instead of the id.
    #[arg(long)]
    pub json: bool,
}

/// `ironclaw sandbox fork`.
#[derive(clap::Args)]
pub struct ForkArgs {
    /// The sandbox to snapshot and copy.
    pub id: String,
    /// How many sandboxes to make (1 to 16) [default: 1].
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u32>,
    /// Lifetime of each new sandbox (90, 90s, 10m, 1h) [default: the service's].
    #[arg(long, value_name = "DUR", value_parser = parse_secs)]
    pub timeout: Option<u64>,
    /// Destroy each new sandbox after this long without a request.
    #[arg(long, value_name = "DUR", value_parser = parse_secs)]
    pub idle_timeout: Option<u64>,
    /// A label of each new sandbox (repeatable).
    #[arg(long, value_name = "K=V")]
    pub label: Vec<String>,
    /// Print the service's JSON instead of the ids.
    #[arg(long)]
    pub json: bool,
}

/// `ironclaw sandbox pause` and `resume`.
#[derive(clap::Args)]
pub struct StateArgs {
    pub id: String,
    /// Print the sandbox as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a snapshot subcommand; returns the exit code.
pub async fn snapshot_command(args: SnapshotArgs) -> anyhow::Result<i32> {
    let client = args.conn.client()?;
    match args.command {
        SnapshotCmd::Ls { quiet, json } => {
            let list = client.json(Method::GET, "/v1/snapshots", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows = list["snapshots"].as_array().cloned().unwrap_or_default();
                print!("{}", table(&rows, quiet, now()));
            }
            Ok(0)
        }
        SnapshotCmd::Inspect { id } => {
            let info = client.json(Method::GET, &snapshot_path(&id), None).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(0)
        }
        SnapshotCmd::Rm { ids } => {
            let paths: Vec<(String, String)> =
                ids.into_iter().map(|id| (snapshot_path(&id), id)).collect();
            super::remove_each(&client, &paths).await
        }
    }
}

/// `sandbox snapshot ID`: prints the snapshot's id.
pub async fn take(client: &Client, a: TakeArgs) -> anyhow::Result<i32> {
    let body = json!({ "name": a.name });
    let info = client
        .json(
            Method::POST,
            &sandbox_path(&a.id, "/snapshots"),
            Some(&body),
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    println!("{}", id_of(&info)?);
    eprintln!("{}", describe(&info));
    Ok(0)
}

/// `sandbox fork ID`: prints the new sandboxes' ids, one per line.
pub async fn fork(client: &Client, a: ForkArgs) -> anyhow::Result<i32> {
    let body = json!({
        "count": a.count,
        "timeout_s": a.timeout,
        "idle_timeout_s": a.idle_timeout,
        "labels": key_values("--label", &a.label)?,
    });
    let made = client
        .json(Method::POST, &sandbox_path(&a.id, "/fork"), Some(&body))
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&made)?);
        return Ok(0);
    }
    let sandboxes = made["sandboxes"].as_array().cloned().unwrap_or_default();
    print!("{}", ids(&sandboxes));
    eprintln!("{}", describe(&made["snapshot"]));
    Ok(0)
}

/// `sandbox pause ID` (`resume` false) or `sandbox resume ID`.
pub async fn set_state(client: &Client, a: StateArgs, resume: bool) -> anyhow::Result<i32> {
    let action = if resume { "/resume" } else { "/pause" };
    let info = client
        .json(Method::POST, &sandbox_path(&a.id, action), None)
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else if let Some(bytes) = info["paused_bytes"].as_u64() {
        eprintln!(
            "paused {} ({} on disk); `ironclaw sandbox resume {}` brings it back",
            a.id,
            mib(bytes),
            a.id
        );
    } else {
        eprintln!("{} is {}", a.id, text(&info, "state"));
    }
    Ok(0)
}

/// A snapshot in one line, for stderr.
fn describe(s: &Value) -> String {
    let name = match s["name"].as_str() {
        Some(n) => format!(" ({n})"),
        None => String::new(),
    };
    format!(
        "snapshot {}{name} of {}: {}, the sandbox paused {} ms",
        text(s, "id"),
        text(s, "source_sandbox"),
        mib(s["bytes"].as_u64().unwrap_or(0)),
        s["pause_ms"].as_u64().unwrap_or(0)
    )
}

fn id_of(info: &Value) -> anyhow::Result<&str> {
    info["id"]
        .as_str()
        .ok_or_else(|| anyhow!("the service's answer has no id: {info}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const HEADERS: [&str; 6] = ["ID", "NAME", "SOURCE", "SIZE", "CREATED", "PAUSE"];

/// The table of `snapshots` (the service's `SnapshotInfo` objects) at time
/// `now`, or their ids one per line with `quiet`.
fn table(snapshots: &[Value], quiet: bool, now: u64) -> String {
    if quiet {
        return ids(snapshots);
    }
    let rows: Vec<[String; 6]> = snapshots
        .iter()
        .map(|s| {
            let created = s["created_at"].as_u64().unwrap_or(now);
            [
                text(s, "id"),
                text(s, "name"),
                text(s, "source_sandbox"),
                mib(s["bytes"].as_u64().unwrap_or(0)),
                format!("{} ago", ago(now.saturating_sub(created))),
                format!("{}ms", s["pause_ms"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    render(&HEADERS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_and_a_line() {
        let s = json!({"id": "snap-1", "name": "after-setup", "source_sandbox": "sb-1",
            "bytes": (120 << 20) + 1, "created_at": 1000, "pause_ms": 340});
        let t = table(std::slice::from_ref(&s), false, 1090);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "ID      NAME         SOURCE  SIZE  CREATED  PAUSE",
                "snap-1  after-setup  sb-1    121M  1m ago   340ms"
            ],
            "{t}"
        );
        assert_eq!(table(std::slice::from_ref(&s), true, 0), "snap-1\n");
        assert_eq!(
            describe(&s),
            "snapshot snap-1 (after-setup) of sb-1: 121M, the sandbox paused 340 ms"
        );
    }
}

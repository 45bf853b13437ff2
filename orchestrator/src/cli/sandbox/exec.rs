//! `ironclaw sandbox exec` and `logs`: a command's output streamed as NDJSON
//! events (base64, so bytes pass unchanged), local stdin sent with `-i`,
//! Ctrl-C and SIGTERM passed on to the command, and its exit status turned
//! into the exit code the way `ironclaw run` does.

use anyhow::{anyhow, Context};
use base64::Engine;
use hyper::{Method, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::client::{self, sandbox_path, status_of, Client, Lines};
use crate::cli::Signals;

/// Bytes of local stdin per request, at most.
const STDIN_CHUNK: usize = 256 << 10;

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The sandbox (an id from `ironclaw sandbox create`).
    pub id: String,
    /// Environment variable for the command (repeatable).
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory of the command [default: the sandbox's].
    #[arg(long, short = 'w', value_name = "DIR")]
    pub cwd: Option<String>,
    /// Kill the command after this long (90, 1.5, 90s, 10m, 1h); exit code 124.
    #[arg(long, value_name = "DUR", value_parser = super::parse_duration)]
    pub timeout: Option<f64>,
    /// Send this process's stdin to the command (until end of file).
    #[arg(short = 'i', long = "stdin", conflicts_with = "detach")]
    pub stdin: bool,
    /// Start the command in the background and print its id (read its
    /// output with `ironclaw sandbox logs ID COMMAND_ID`).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// One line of a streamed command (`StreamEvent` of the service).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event {
    Started {
        command_id: String,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Dropped {
        bytes: u64,
    },
    Exit(End),
    #[serde(other)]
    Unknown,
}

/// How a command ended (`CommandEnd` of the service).
#[derive(Deserialize, Default)]
struct End {
    exit_code: Option<i32>,
    signal: Option<i32>,
    #[serde(default)]
    timed_out: bool,
    error: Option<String>,
}

impl End {
    /// The shell's exit code for it (the command's, 128+N on signal N, 124
    /// on timeout, 125 when the sandbox failed), said on stderr unless it exited.
    fn code(&self) -> i32 {
        if let Some(e) = &self.error {
            eprintln!("ironclaw: the sandbox failed before the command ended: {e}");
            crate::cli::EXIT_IRONCLAW_ERROR as i32
        } else if self.timed_out {
            eprintln!("ironclaw: the command timed out and was killed");
            124
        } else if let Some(code) = self.exit_code {
            code
        } else if let Some(sig) = self.signal {
            eprintln!("ironclaw: the command was killed by signal {sig}");
            128 + sig
        } else {
            255
        }
    }
}

pub async fn exec(client: &Client, a: ExecArgs) -> anyhow::Result<i32> {
    let body = json!({
        "argv": a.command,
        "env": super::key_values("--env", &a.env)?,
        "cwd": a.cwd,
        "timeout_s": a.timeout,
        "interactive_stdin": a.stdin,
        "encoding": "base64",
    });
    if a.detach {
        let info = client
            .json(Method::POST, &sandbox_path(&a.id, "/commands"), Some(&body))
            .await?;
        let cid = info["command_id"]
            .as_str()
            .ok_or_else(|| anyhow!("the service's answer has no command_id: {info}"))?;
        println!("{cid}");
        return Ok(0);
    }
    // Installed before the command starts, so no Ctrl-C kills this client
    // and leaves the command running.
    let signals = Signals::new()?;
    let resp = client
        .send(
            Method::POST,
            &sandbox_path(&a.id, "/exec/stream"),
            Some("application/json"),
            client::bytes_body(body.to_string().into()),
        )
        .await?;
    follow(client, &a.id, resp, a.stdin, Some(signals)).await
}

pub async fn logs(client: &Client, id: &str, cid: &str, follow_it: bool) -> anyhow::Result<i32> {
    let base = sandbox_path(id, &format!("/commands/{}", client::query_escape(cid)));
    if follow_it {
        let path = format!("{base}/stream?cursor=0&encoding=base64");
        let resp = client
            .send(Method::GET, &path, None, client::empty())
            .await?;
        return follow(client, id, resp, false, None).await;
    }
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    let mut cursor = 0;
    loop {
        let path = format!("{base}/output?cursor={cursor}&encoding=base64");
        let page = client.json(Method::GET, &path, None).await?;
        dropped(page["dropped_bytes"].as_u64().unwrap_or(0));
        for chunk in page["chunks"].as_array().into_iter().flatten() {
            let data = chunk["data"].as_str().unwrap_or_default();
            match chunk["stream"].as_str() {
                Some("stderr") => emit(&mut err, data).await?,
                _ => emit(&mut out, data).await?,
            }
        }
        let next = page["next_cursor"].as_u64().unwrap_or(cursor);
        if !page["end"].is_null() || next <= cursor {
            return Ok(0);
        }
        cursor = next;
    }
}

/// Plays a command's event stream: output to stdout and stderr as it
/// comes, stdin sent once it started (`stdin`), signals passed on; returns
/// its exit code.
async fn follow(
    client: &Client,
    id: &str,
    resp: Response<hyper::body::Incoming>,
    stdin: bool,
    mut signals: Option<Signals>,
) -> anyhow::Result<i32> {
    let mut lines = Lines::new(resp.into_body());
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    let mut command: Option<String> = None;
    let mut pending: Option<&'static str> = None;
    let mut received = 0;
    loop {
        let line = tokio::select! {
            line = lines.next() => line?,
            sig = next_signal(&mut signals) => {
                received += 1;
                if received >= 3 {
                    eprintln!("ironclaw: signal {sig} again: leaving, the command may still run");
                    return Ok(128 + sig);
                }
                // The first is passed on as it is; a second one kills.
                let name = if received == 1 { signal_name(sig) } else { "KILL" };
                match &command {
                    Some(cid) => send_signal(client, id, cid, name).await,
                    None => pending = Some(name),
                }
                continue;
            }
        };
        let Some(line) = line else {
            return Err(anyhow!(
                "the service ended the stream before the command ended"
            ));
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let event: Event =
            serde_json::from_slice(&line).context("an event of the stream is not valid")?;
        match event {
            Event::Started { command_id } => {
                if stdin {
                    let path = sandbox_path(
                        id,
                        &format!("/commands/{}/stdin", client::query_escape(&command_id)),
                    );
                    tokio::spawn(send_stdin(client.clone(), path, tokio::io::stdin()));
                }
                if let Some(name) = pending.take() {
                    send_signal(client, id, &command_id, name).await;
                }
                command = Some(command_id);
            }
            Event::Stdout { data } => {
                written(client, id, &command, emit(&mut out, &data).await).await?
            }
            Event::Stderr { data } => {
                written(client, id, &command, emit(&mut err, &data).await).await?
            }
            Event::Dropped { bytes } => dropped(bytes),
            Event::Exit(end) => return Ok(end.code()),
            Event::Unknown => {}
        }
    }
}

/// A failed local write ends the command (nobody reads it any more): a
/// closed pipe quietly, as SIGPIPE would (exit code 141), anything else as an error.
async fn written(
    client: &Client,
    id: &str,
    command: &Option<String>,
    wrote: std::io::Result<()>,
) -> anyhow::Result<()> {
    let Err(e) = wrote else { return Ok(()) };
    if let Some(cid) = command {
        send_signal(client, id, cid, "KILL").await;
    }
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(128 + libc::SIGPIPE);
    }
    Err(e.into())
}

async fn next_signal(signals: &mut Option<Signals>) -> i32 {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "INT",
        libc::SIGHUP => "HUP",
        _ => "TERM",
    }
}

/// Passes a signal on; a command that already ended is no error.
async fn send_signal(client: &Client, id: &str, cid: &str, name: &str) {
    let path = sandbox_path(
        id,
        &format!("/commands/{}/signal", client::query_escape(cid)),
    );
    let body = json!({ "signal": name });
    match client.json(Method::POST, &path, Some(&body)).await {
        Ok(_) => {}
        Err(e) if status_of(&e).map(|s| s.as_u16()) == Some(409) => {}
        Err(e) => eprintln!("ironclaw: passing SIG{name} on: {e:#}"),
    }
}

/// Sends `input` to the command (at `path`, its stdin endpoint) until end
/// of file, then closes the command's stdin.
async fn send_stdin<R: AsyncRead + Unpin>(client: Client, path: String, mut input: R) {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                eprintln!("ironclaw: reading stdin: {e}");
                break;
            }
        };
        let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
        let body = json!({ "data": data, "encoding": "base64" });
        if !post_stdin(&client, &path, &body).await {
            return;
        }
    }
    post_stdin(&client, &path, &json!({ "close": true })).await;
}

/// Whether the command took `body`: retried while it is not reading (429),
/// false once it ended (409) or on another failure (said on stderr).
async fn post_stdin(client: &Client, path: &str, body: &serde_json::Value) -> bool {
    loop {
        match client.json(Method::POST, path, Some(body)).await {
            Ok(_) => return true,
            Err(e) => match status_of(&e).map(|s| s.as_u16()) {
                Some(429) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Some(409) => return false,
                _ => {
                    eprintln!("ironclaw: sending stdin: {e:#}");
                    return false;
                }
            },
        }
    }
}

/// Writes base64 `data` to `w` now.
async fn emit<W: AsyncWrite + Unpin>(w: &mut W, data: &str) -> std::io::Result<()> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| {
            std::io::Error::other(format!("output from the service is not base64: {e}"))
        })?;
    w.write_all(&bytes).await?;
    w.flush().await
}

fn dropped(bytes: u64) {
    if bytes > 0 {
        eprintln!("ironclaw: {bytes} bytes of output were lost (not read in time)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_exit_codes() {
        let e: Event = serde_json::from_str(
            r#"{"type":"exit","exit_code":3,"signal":null,"timed_out":false,"error":null}"#,
        )
        .unwrap();
        assert!(matches!(e, Event::Exit(ref end) if end.code() == 3));
        let e: Event = serde_json::from_str(
            r#"{"type":"exit","exit_code":null,"signal":9,"timed_out":false}"#,
        )
        .unwrap();
        assert!(matches!(e, Event::Exit(ref end) if end.code() == 137));
        let e: Event =
            serde_json::from_str(r#"{"type":"exit","exit_code":null,"signal":9,"timed_out":true}"#)
                .unwrap();
        assert!(matches!(e, Event::Exit(ref end) if end.code() == 124));
        let e: Event = serde_json::from_str(r#"{"type":"exit","error":"gone"}"#).unwrap();
        assert!(matches!(e, Event::Exit(ref end) if end.code() == 125));
        let e: Event = serde_json::from_str(r#"{"type":"later","x":1}"#).unwrap();
        assert!(matches!(e, Event::Unknown));
        let e: Event = serde_json::from_str(r#"{"type":"started","command_id":"c1"}"#).unwrap();
        assert!(matches!(e, Event::Started { command_id } if command_id == "c1"));
    }
}

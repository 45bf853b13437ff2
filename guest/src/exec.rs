//! Running one command for the host: streamed output, stdin, timeout, kill.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ironclaw_protocol::{ExecRequest, ExitStatus, Frame, FrameKind, Message, DATA_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::pgroup::ProcessGroup;
use crate::spawn::{self, SpawnSpec};
use crate::stream::{Input, InputRx, StreamOut};

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `oom_score_adj` of every command: when the guest runs out of memory
/// its OOM killer takes the command, never the agent (-1000, see `init`).
pub const COMMAND_OOM_SCORE_ADJ: &[u8] = b"500";

/// The command of `req`: its program looked up in its `PATH`, its
/// environment (the base, then the request's), its directory.
fn prepare(req: &ExecRequest) -> std::io::Result<SpawnSpec> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("PATH", BASE_PATH);
    env.insert("HOME", "/root");
    env.insert("LANG", "C.UTF-8");
    for (k, v) in &req.env {
        env.insert(k, v);
    }
    let cwd = req.cwd.as_deref().unwrap_or("/root");
    let program = spawn::find_program(&req.argv[0], env["PATH"], Path::new(cwd))?;
    Ok(SpawnSpec {
        program: spawn::c_string("the program path", program.as_os_str().as_encoded_bytes())?,
        argv: req
            .argv
            .iter()
            .map(|a| spawn::c_string("an argument", a.as_bytes()))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|(k, v)| spawn::env_entry(k, v))
            .collect::<Result<_, _>>()?,
        cwd: spawn::c_string("the working directory", cwd.as_bytes())?,
        stdin_piped: req.stdin,
        oom_score_adj: COMMAND_OOM_SCORE_ADJ,
    })
}

/// Starts `req` on the stream of `out`, its stdin fed from `stdin` when the
/// request asked for stdin. Returns the process group; a failure to start is
/// reported to the host on the stream (and ends it).
pub fn start(out: StreamOut, req: ExecRequest, stdin: Option<InputRx>) -> Option<ProcessGroup> {
    let Some(program) = req.argv.first() else {
        let msg = Message::Error {
            message: "exec: argv is empty".into(),
        };
        tokio::spawn(async move { out.finish(&msg).await });
        return None;
    };
    let spawned = prepare(&req).and_then(|spec| spawn::spawn(&spec));
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            let msg = Message::Error {
                message: format!("exec {program:?}: {e}"),
            };
            tokio::spawn(async move { out.finish(&msg).await });
            return None;
        }
    };
    let pid = spawned.pid as u32;
    let handle = ProcessGroup { pgid: spawned.pid };
    let mut child = spawn::Child::new(spawned.pid);
    let pipes = (|| {
        Ok::<_, std::io::Error>((
            spawned.stdin.map(pipe::Sender::from_owned_fd).transpose()?,
            pipe::Receiver::from_owned_fd(spawned.stdout)?,
            pipe::Receiver::from_owned_fd(spawned.stderr)?,
        ))
    })();
    let (child_stdin, stdout, stderr) = match pipes {
        Ok(p) => p,
        Err(e) => {
            handle.kill();
            let msg = Message::Error {
                message: format!("exec {program:?}: the output pipes: {e}"),
            };
            tokio::spawn(async move {
                let _ = child.wait().await;
                out.finish(&msg).await
            });
            return None;
        }
    };

    if let (Some(child_stdin), Some(input)) = (child_stdin, stdin) {
        tokio::spawn(feed_stdin(child_stdin, input));
    }
    let timeout = req.timeout_ms.map(Duration::from_millis);
    let keep_background = req.keep_background;

    tokio::spawn(async move {
        // The stream's first charged frame: the window always has room for it.
        let _ = out
            .send(Frame::control(out.id(), &Message::Started { pid }))
            .await;
        let exited = CancellationToken::new();
        let pump_out = tokio::spawn(pump(stdout, FrameKind::Stdout, out.clone(), exited.clone()));
        let pump_err = tokio::spawn(pump(stderr, FrameKind::Stderr, out.clone(), exited.clone()));
        let mut timed_out = false;
        let waited = match timeout {
            Some(t) => match tokio::time::timeout(t, child.wait()).await {
                Ok(r) => r,
                Err(_) => {
                    timed_out = true;
                    handle.kill();
                    child.wait().await
                }
            },
            None => child.wait().await,
        };
        // The command is over: whatever it left running in its group goes too,
        // so its output pipes close and nothing outlives the request (unless
        // the host asked to keep it: a held sandbox's `server &`). All its
        // output is delivered, however long the host takes to read it (the
        // pumps wait for credit), but pipes that stay open and silent (held
        // by a process that left the group, or was kept) are given up after
        // a while.
        if timed_out || !keep_background {
            handle.kill();
        }
        exited.cancel();
        let _ = pump_out.await;
        let _ = pump_err.await;
        let msg = match waited {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                Message::Exited(ExitStatus {
                    code: status.code(),
                    signal: status.signal(),
                    timed_out,
                })
            }
            Err(e) => Message::Error {
                message: format!("wait: {e}"),
            },
        };
        // Ends the stream: its stdin channel closes, pumps still waiting
        // for credit give up.
        out.finish(&msg).await;
    });
    Some(handle)
}

/// Writes the host's stdin data to the process, giving the host credit as
/// the process takes it. A process that stops reading holds up only this
/// task (and, once the window is full, the host's writer of this stream);
/// one that closed its stdin just loses the rest, which is still credited so
/// the host's writer is not left waiting.
async fn feed_stdin(mut child_stdin: pipe::Sender, mut input: InputRx) {
    let mut open = true;
    while let Some(item) = input.recv().await {
        let Input::Data(data) = item else { break };
        if open && child_stdin.write_all(&data).await.is_err() {
            open = false;
        }
        input.consumed(data.len()).await;
    }
    // Dropping child_stdin closes the pipe: the process sees EOF.
}

/// How long an output pipe may stay open and silent once the command ended.
const PIPE_LINGER: Duration = Duration::from_secs(2);

async fn pump(
    mut src: impl AsyncRead + Unpin,
    kind: FrameKind,
    out: StreamOut,
    exited: CancellationToken,
) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        let read = if exited.is_cancelled() {
            match tokio::time::timeout(PIPE_LINGER, src.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            // Reading a pipe is cancel-safe: nothing is lost on the switch.
            tokio::select! {
                r = src.read(&mut buf) => r,
                _ = exited.cancelled() => continue,
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let frame = Frame::data(out.id(), kind, Bytes::copy_from_slice(&buf[..n]));
                // Waits for the host's credit; gives up when the stream or
                // the session ends.
                if out.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
}

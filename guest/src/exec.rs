//! Running one command for the host: streamed output, stdin, timeout, kill.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use ironclaw_protocol::{ExecRequest, ExitStatus, Frame, FrameKind, Message, DATA_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio_util::sync::CancellationToken;

use crate::pgroup::ProcessGroup;
use crate::stream::{Input, InputRx, StreamOut};

const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `oom_score_adj` of every command: when the guest runs out of memory
/// its OOM killer takes the command, never the agent (-1000, see `init`).
pub const COMMAND_OOM_SCORE_ADJ: &[u8] = b"500";

/// In the forked child, before exec: a session (and so a process group) of
/// its own, and the command's OOM score. Only async-signal-safe calls.
fn detach_and_expose() -> std::io::Result<()> {
    // SAFETY: setsid(2) takes no pointers; the child is not yet a group
    // leader (nothing called setpgid), so it succeeds.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated literal path; open/write/close are
    // async-signal-safe and the buffer outlives the write.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(
            fd,
            COMMAND_OOM_SCORE_ADJ.as_ptr().cast(),
            COMMAND_OOM_SCORE_ADJ.len(),
        );
        libc::close(fd);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..])
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .envs(&req.env)
        .current_dir(req.cwd.as_deref().unwrap_or("/root"))
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure only makes async-signal-safe system calls (see
    // detach_and_expose) and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(detach_and_expose);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let msg = Message::Error {
                message: format!("exec {program:?}: {e}"),
            };
            tokio::spawn(async move { out.finish(&msg).await });
            return None;
        }
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    let handle = ProcessGroup { pgid: pid as i32 };

    if let (Some(child_stdin), Some(input)) = (child.stdin.take(), stdin) {
        tokio::spawn(feed_stdin(child_stdin, input));
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
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
async fn feed_stdin(mut child_stdin: ChildStdin, mut input: InputRx) {
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

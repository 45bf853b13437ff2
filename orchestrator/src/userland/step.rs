//! A build step: a tool run with its output into the build log and, line by
//! line, to the caller's progress.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{io_err, Progress, UserlandError};

/// Runs `cmd` with its output into `log` (and, line by line, to `progress`).
pub(super) fn run_logged(
    step: &'static str,
    mut cmd: Command,
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), UserlandError> {
    let mut log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("creating {}", log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(format!("starting {step}")))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    for line in rx {
        let _ = writeln!(log_file, "{line}");
        progress(Progress::Detail(line));
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .map_err(io_err(format!("waiting for {step}")))?;
    if status.success() {
        return Ok(());
    }
    Err(UserlandError::StepFailed {
        step,
        status: status.to_string(),
        log: log.to_path_buf(),
        tail: crate::vm::host::tail(log, 2000),
    })
}

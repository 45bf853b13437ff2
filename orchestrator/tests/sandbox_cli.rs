//! `ironclaw sandbox …` end to end: the real CLI binary against a real
//! `ironclaw serve` (real VMs), found through its runtime root like a user
//! would, or over TCP with a token file.

mod service_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service_support::{new_token, Server};

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}; stdout {:?}; stderr {:?}",
            self.code,
            String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(400)]),
            self.stderr
        )
    }
}

/// `ironclaw sandbox ARGS` with the runtime root `root` (so the service's
/// socket is found by default), `stdin` fed to it.
fn cli_in(root: &Path, args: &[&str], stdin: Option<&[u8]>) -> Out {
    ironclaw_in(root, "sandbox", args, stdin)
}

/// `ironclaw COMMAND ARGS` so.
fn ironclaw_in(root: &Path, command: &str, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ironclaw"))
        .env("IRONCLAW_RUNTIME_DIR", root)
        .env_remove("IRONCLAW_HOST")
        .env_remove("IRONCLAW_TOKEN_FILE")
        .arg(command)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn cli(server: &Server, args: &[&str]) -> Out {
    cli_in(&server.root, args, None)
}

/// `ironclaw snapshot ARGS`.
fn snapshots(server: &Server, args: &[&str]) -> Out {
    ironclaw_in(&server.root, "snapshot", args, None)
}

/// The one line a successful command printed (an id).
fn one_line(out: &Out) -> String {
    let text = out.text();
    assert!(
        out.code == 0 && text.lines().count() == 1 && text.ends_with('\n'),
        "{out:?}"
    );
    text.trim().to_string()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).unwrap();
    b
}

/// The issue's scenario, exit codes, stdin, signals, ls, rm.
#[test]
fn create_exec_ls_rm() {
    let server = Server::start("cli-exec", false, &["--pool-size", "1"]);
    let out = cli(&server, &["create", "--timeout", "10m"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.text().trim().to_string();
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "{out:?}"
    );
    assert_eq!(out.text(), format!("{id}\n"), "the id alone: {out:?}");

    let write = r#"open("/work/x","w").write("42")"#;
    let out = cli(&server, &["exec", &id, "--", "python3", "-c", write]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli(&server, &["exec", &id, "--", "cat", "/work/x"]);
    assert_eq!((out.code, out.text().as_str()), (0, "42"), "{out:?}");

    // stdout and stderr apart; the command's own exit code, 128+N, 124.
    let out = cli(
        &server,
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!((out.code, out.text().as_str()), (3, "out\n"), "{out:?}");
    assert!(out.stderr.contains("err\n"), "{out:?}");
    let out = cli(&server, &["exec", &id, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.code, 137, "{out:?}");
    let out = cli(
        &server,
        &["exec", &id, "--timeout", "1", "--", "sleep", "30"],
    );
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed out"), "{out:?}");

    // -i: stdin passes through, bytes unchanged (more than one request's worth).
    let input = random_bytes(600 << 10);
    let out = cli_in(
        &server.root,
        &["exec", "-i", &id, "--", "cat"],
        Some(&input),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout == input, "stdin came back changed: {out:?}");

    // Ctrl-C on the client reaches the command, which decides how to end.
    let script = r#"trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.1; done"#;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ironclaw"))
        .env("IRONCLAW_RUNTIME_DIR", &server.root)
        .args(["sandbox", "exec", &id, "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(lines.next().unwrap().unwrap(), "got INT");
    assert_eq!(child.wait().unwrap().code(), Some(7));

    let out = cli(&server, &["ls"]);
    assert_eq!(out.code, 0, "{out:?}");
    let text = out.text();
    assert!(text.starts_with("ID "), "{out:?}");
    assert!(
        text.contains("MEMORY") && text.contains("COMMANDS"),
        "{out:?}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&id) && l.contains("running")),
        "{out:?}"
    );
    let out = cli(&server, &["ls", "-q"]);
    assert_eq!(out.text(), format!("{id}\n"), "{out:?}");

    let out = cli(&server, &["rm", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli(&server, &["inspect", &id]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.starts_with("ironclaw: ") && out.stderr.contains("(not_found)"),
        "{out:?}"
    );
    assert_eq!(cli(&server, &["ls", "-q"]).text(), "");
}

/// Files and directories in and out, background commands, and the same
/// client over TCP with a token (and refused with a wrong one).
#[test]
fn cp_logs_and_tcp() {
    let server = Server::start("cli-cp", true, &["--pool-size", "1"]);
    let id = cli(&server, &["create"]).text().trim().to_string();
    let local = tempfile::tempdir().unwrap();

    let data = random_bytes(3 << 20);
    let file = local.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let out = cli(
        &server,
        &["cp", file.to_str().unwrap(), &format!("{id}:/work/")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let back = local.path().join("back.bin");
    let src = format!("{id}:/work/data.bin");
    let out = cli(&server, &["cp", &src, back.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the file came back changed"
    );
    let out = cli(&server, &["cp", &format!("{id}:/work/none"), "-"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("(not_found)"), "{out:?}");

    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.bin"), &data[..100_000]).unwrap();
    let out = cli(
        &server,
        &["cp", "-r", tree.to_str().unwrap(), &format!("{id}:/work")],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli(&server, &["exec", &id, "--", "cat", "/work/tree/a.txt"]);
    assert_eq!(out.text(), "alpha\n", "{out:?}");
    let copy = local.path().join("copy");
    let out = cli(
        &server,
        &[
            "cp",
            "-r",
            &format!("{id}:/work/tree"),
            copy.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(copy.join("a.txt")).unwrap(),
        "alpha\n"
    );
    assert!(std::fs::read(copy.join("sub/b.bin")).unwrap() == data[..100_000]);

    // A background command: its id, then its whole output and exit code.
    let out = cli(
        &server,
        &[
            "exec",
            "-d",
            &id,
            "--",
            "sh",
            "-c",
            "echo one; sleep 1; echo two; exit 5",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let cid = out.text().trim().to_string();
    let out = cli(&server, &["logs", "-f", &id, &cid]);
    assert_eq!(
        (out.code, out.text().as_str()),
        (5, "one\ntwo\n"),
        "{out:?}"
    );
    let out = cli(&server, &["logs", &id, &cid]);
    assert_eq!(
        (out.code, out.text().as_str()),
        (0, "one\ntwo\n"),
        "{out:?}"
    );

    // TCP: a tenant of its own, with the token of the file.
    let host = format!("http://{}", server.tcp.as_ref().unwrap());
    let token_file = server.token_file.as_ref().unwrap().to_str().unwrap();
    let tcp = |args: &[&str]| {
        let mut all = vec!["--host", &host, "--token-file", token_file];
        all.extend_from_slice(args);
        cli(&server, &all)
    };
    let out = tcp(&["create", "--timeout", "60"]);
    assert_eq!(out.code, 0, "{out:?}");
    let tcp_id = out.text().trim().to_string();
    let out = tcp(&["exec", &tcp_id, "--", "echo", "over tcp"]);
    assert_eq!(
        (out.code, out.text().as_str()),
        (0, "over tcp\n"),
        "{out:?}"
    );
    assert_eq!(tcp(&["ls", "-q"]).text(), format!("{tcp_id}\n"));
    assert_eq!(tcp(&["rm", &tcp_id]).code, 0);

    let wrong = local.path().join("wrong.token");
    std::fs::write(&wrong, format!("# not the service's\n{}\n", new_token())).unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cli(
        &server,
        &[
            "--host",
            &host,
            "--token-file",
            wrong.to_str().unwrap(),
            "ls",
        ],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("missing or wrong token") && out.stderr.contains("(unauthorized)"),
        "{out:?}"
    );
}

/// The value of the counter the scenario's background loop writes each second.
fn counter(server: &Server, id: &str) -> u64 {
    let out = cli(server, &["exec", id, "--", "cat", "/work/count"]);
    assert_eq!(out.code, 0, "{id}: {out:?}");
    out.text()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"))
}

/// Whether the background loop of `id` still runs: its counter grows.
fn counting(server: &Server, id: &str) -> u64 {
    let before = counter(server, id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = counter(server, id);
        if now > before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: the counter stays at {before}"
        );
    }
}

/// Snapshots, forks, pause and resume from the command line (the issue's
/// scenario): files and running processes carried into the copies, a
/// paused sandbox refusing commands until it is resumed, snapshots listed
/// and removed.
#[test]
fn snapshot_fork_pause_resume() {
    let server = Server::start("cli-snap", false, &["--pool-size", "1"]);
    let id = one_line(&cli(&server, &["create", "--timeout", "10m"]));
    let setup = "echo state > /work/s; (i=0; while true; do i=$((i+1)); echo $i > /work/count; \
                 sleep 1; done) >/dev/null 2>&1 &";
    let out = cli(&server, &["exec", &id, "--", "sh", "-c", setup]);
    assert_eq!(out.code, 0, "{out:?}");

    let out = cli(&server, &["snapshot", &id, "--name", "after-setup"]);
    let snap = one_line(&out);
    assert!(snap.starts_with("snap-"), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("snapshot {snap} (after-setup) of {id}")),
        "{out:?}"
    );

    // By id and by name: the file, and the loop running on.
    let a = one_line(&cli(&server, &["create", "--from", &snap]));
    let b = one_line(&cli(&server, &["create", "--from", "after-setup"]));
    assert!(a != b && a != id && b != id, "{id} {a} {b}");
    for copy in [&a, &b] {
        let out = cli(&server, &["exec", copy, "--", "cat", "/work/s"]);
        assert_eq!(
            (out.code, out.text().as_str()),
            (0, "state\n"),
            "{copy}: {out:?}"
        );
    }
    counting(&server, &b);
    let out = cli(&server, &["inspect", &a]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["from_snapshot"], snap.as_str(), "{info}");

    let out = cli(&server, &["fork", &id, "--count", "2"]);
    assert_eq!(out.code, 0, "{out:?}");
    let forks: Vec<String> = out.text().lines().map(String::from).collect();
    assert!(
        forks.len() == 2 && forks[0] != forks[1] && forks.iter().all(|f| f.starts_with("sb-")),
        "{out:?}"
    );
    assert!(out.stderr.contains("snapshot snap-"), "{out:?}");
    let out = cli(&server, &["exec", &forks[1], "--", "cat", "/work/s"]);
    assert_eq!(out.text(), "state\n", "{out:?}");

    // Paused: listed as such, commands refused; resumed: the loop counts on.
    let before = counter(&server, &id);
    let out = cli(&server, &["pause", &id]);
    assert!(
        out.code == 0 && out.stdout.is_empty() && out.stderr.contains("on disk"),
        "{out:?}"
    );
    let out = cli(&server, &["ls"]);
    let state = |ls: &Out, id: &str| {
        let line = ls
            .text()
            .lines()
            .find(|l| l.starts_with(id))
            .map(String::from);
        line.unwrap_or_else(|| panic!("{id} is not listed: {ls:?}"))
    };
    assert!(state(&out, &id).contains(" paused"), "{out:?}");
    assert!(state(&out, &a).contains(" running"), "{out:?}");
    let out = cli(&server, &["exec", &id, "--", "true"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("is paused") && out.stderr.contains("(sandbox_paused)"),
        "{out:?}"
    );
    let out = cli(&server, &["resume", &id]);
    assert!(out.code == 0 && out.stderr.contains("running"), "{out:?}");
    let after = counting(&server, &id);
    assert!(after > before, "the counter went from {before} to {after}");
    assert!(state(&cli(&server, &["ls"]), &id).contains(" running"));

    // Listed (with the fork's), inspected by name, removed once.
    let out = snapshots(&server, &["ls"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.text().starts_with("ID "), "{out:?}");
    assert!(
        out.text()
            .lines()
            .any(|l| l.starts_with(&snap) && l.contains("after-setup") && l.contains(&id)),
        "{out:?}"
    );
    assert_eq!(snapshots(&server, &["ls", "-q"]).text().lines().count(), 2);
    let out = snapshots(&server, &["inspect", "after-setup"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (info["id"].as_str(), info["source_sandbox"].as_str()),
        (Some(snap.as_str()), Some(id.as_str())),
        "{info}"
    );
    let out = snapshots(&server, &["rm", &snap]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{out:?}");
    assert!(!snapshots(&server, &["ls", "-q"]).text().contains(&snap));
    let out = snapshots(&server, &["rm", &snap, "snap-none"]);
    assert_eq!(out.code, 125, "{out:?}");
    for gone in [&snap, "snap-none"] {
        assert!(
            out.stderr
                .contains(&format!("ironclaw: {gone}: no snapshot {gone}")),
            "{out:?}"
        );
    }
    let out = cli(&server, &["create", "--from", "after-setup"]);
    assert!(
        out.code == 125 && out.stderr.contains("(not_found)"),
        "{out:?}"
    );

    assert_eq!(cli(&server, &["rm", "--all"]).code, 0);
    assert_eq!(cli(&server, &["ls", "-q"]).text(), "");
}

#[test]
fn no_service_is_said_clearly() {
    let root = tempfile::tempdir().unwrap();
    let out = cli_in(root.path(), &["ls"], None);
    assert_eq!(out.code, 125, "{out:?}");
    let socket = root.path().join("ironclaw.sock");
    assert_eq!(
        out.stderr,
        format!(
            "ironclaw: no service at {}: start one with `ironclaw serve`\n",
            socket.display()
        )
    );
}

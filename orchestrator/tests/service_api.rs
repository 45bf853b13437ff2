//! The REST API of `ironclaw serve`, end to end: the real service binary,
//! real VMs, requests over its real unix socket and TCP port.

mod service_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use service_support::{new_token, Server};
use sha2::{Digest, Sha256};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn create(server: &Server, body: Value) -> String {
    let (status, sb) = server.call("POST", "/v1/sandboxes", Some(body)).await;
    assert_eq!(status, 201, "{sb}");
    sb["id"].as_str().unwrap().to_string()
}

async fn exec(server: &Server, id: &str, body: Value) -> Value {
    let (status, out) = server
        .call("POST", &format!("/v1/sandboxes/{id}/exec"), Some(body))
        .await;
    assert_eq!(status, 200, "{out}");
    out
}

/// A streamed exec read frame by frame (pausing `pause` after the first):
/// its events, and when the first stdout event arrived.
async fn stream_exec(
    server: &Server,
    id: &str,
    body: Value,
    pause: Option<Duration>,
) -> (Vec<Value>, Option<Instant>) {
    let stream = tokio::net::UnixStream::connect(&server.socket)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("/v1/sandboxes/{id}/exec/stream"))
        .header("host", "x")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let (mut raw, mut first_stdout, mut paused) = (Vec::new(), None, false);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            raw.extend_from_slice(&data);
            if first_stdout.is_none() && String::from_utf8_lossy(&raw).contains("\"stdout\"") {
                first_stdout = Some(Instant::now());
            }
            if let (Some(p), false) = (pause, paused) {
                tokio::time::sleep(p).await;
                paused = true;
            }
        }
    }
    let events = String::from_utf8(raw)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, first_stdout)
}

#[test]
fn commands_keep_state_stream_take_stdin_time_out_and_take_signals() {
    let server = Server::start("api-cmd", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let id = create(
            &server,
            json!({"timeout_s": 300, "env": {"GREETING": "hi"}}),
        )
        .await;
        // State persists between execs; the sandbox's env and cwd apply.
        let out = exec(
            &server,
            &id,
            json!({"argv": ["python3", "-c", "open('x','w').write('42')"]}),
        )
        .await;
        assert_eq!(out["exit_code"], 0, "{out}");
        let out = exec(
            &server,
            &id,
            json!({"cmd": "cat /work/x; echo \" $GREETING\"; pwd >&2"}),
        )
        .await;
        assert_eq!(
            (out["stdout"].as_str(), out["stderr"].as_str()),
            (Some("42 hi\n"), Some("/work\n"))
        );
        // stdin, the output cap, a per-command timeout.
        let out = exec(
            &server,
            &id,
            json!({"argv": ["wc", "-c"], "stdin": "hello"}),
        )
        .await;
        assert_eq!(out["stdout"].as_str().map(str::trim), Some("5"));
        let out = exec(
            &server,
            &id,
            json!({"cmd": "head -c 5000 /dev/zero", "max_output_bytes": 100}),
        )
        .await;
        assert_eq!(
            (
                out["stdout"].as_str().unwrap().len(),
                &out["stdout_truncated"]
            ),
            (100, &json!(true))
        );
        let out = exec(&server, &id, json!({"cmd": "sleep 30", "timeout_s": 1})).await;
        assert_eq!(out["timed_out"], true, "{out}");

        // A streamed exec: the first chunk comes before the command ends.
        let t0 = Instant::now();
        let (events, first) = stream_exec(
            &server,
            &id,
            json!({"cmd": "echo first; sleep 3; echo second"}),
            None,
        )
        .await;
        let total = t0.elapsed();
        assert_eq!(events.first().unwrap()["type"], "started", "{events:?}");
        assert_eq!(events.last().unwrap()["type"], "exit", "{events:?}");
        assert_eq!(events.last().unwrap()["exit_code"], 0, "{events:?}");
        let first = first.unwrap() - t0;
        assert!(
            total - first >= Duration::from_secs(2),
            "first chunk at {first:?}, end at {total:?}"
        );

        // A streamed exec whose reader is slow loses nothing: the command
        // waits for it (8 MiB through a 1 MiB ring).
        let (events, _) = stream_exec(
            &server,
            &id,
            json!({"cmd": "head -c 8388608 /dev/zero | tr '\\0' a"}),
            Some(Duration::from_secs(3)),
        )
        .await;
        assert!(
            events.iter().all(|e| e["type"] != "dropped"),
            "output was dropped"
        );
        let bytes: usize = events
            .iter()
            .filter(|e| e["type"] == "stdout")
            .map(|e| e["data"].as_str().unwrap().len())
            .sum();
        assert_eq!(bytes, 8 << 20);
        assert_eq!(events.last().unwrap()["exit_code"], 0);

        // A streamed exec whose client goes away is killed, like a command
        // whose terminal closed.
        let stream = tokio::net::UnixStream::connect(&server.socket)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = hyper::Request::post(format!("/v1/sandboxes/{id}/exec/stream"))
            .header("host", "x")
            .body(http_body_util::Full::new(Bytes::from(
                json!({"cmd": "sleep 300"}).to_string(),
            )))
            .unwrap();
        let mut body = sender.send_request(req).await.unwrap().into_body();
        let started = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let started: Value = serde_json::from_slice(&started).unwrap();
        let cid = started["command_id"].as_str().unwrap().to_string();
        drop(body);
        drop(sender);
        conn.abort();
        let (_, done) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{id}/commands/{cid}/wait?timeout_ms=20000"),
                None,
            )
            .await;
        assert_eq!(done["end"]["signal"], 9, "{done}");

        // A background command with interactive stdin, read from a cursor.
        let base = format!("/v1/sandboxes/{id}/commands");
        let (status, cmd) = server
            .call(
                "POST",
                &base,
                Some(json!({"cmd": "cat; echo done >&2", "interactive_stdin": true})),
            )
            .await;
        assert_eq!(status, 201, "{cmd}");
        let cid = cmd["command_id"].as_str().unwrap().to_string();
        // Several commands at once in one sandbox.
        let (_, sleeper) = server
            .call("POST", &base, Some(json!({"argv": ["sleep", "300"]})))
            .await;
        let sleeper = sleeper["command_id"].as_str().unwrap().to_string();
        let out = exec(&server, &id, json!({"argv": ["echo", "meanwhile"]})).await;
        assert_eq!(out["stdout"], "meanwhile\n");
        let (status, _) = server
            .call(
                "POST",
                &format!("{base}/{cid}/stdin"),
                Some(json!({"data": "hello\n"})),
            )
            .await;
        assert_eq!(status, 204);
        let (_, page) = server
            .call(
                "GET",
                &format!("{base}/{cid}/output?cursor=0&wait_ms=10000"),
                None,
            )
            .await;
        assert_eq!(page["chunks"][0]["data"], "hello\n", "{page}");
        assert_eq!(page["next_cursor"], 6, "{page}");
        assert!(page["end"].is_null(), "{page}");
        let (status, _) = server
            .call(
                "POST",
                &format!("{base}/{cid}/stdin"),
                Some(json!({"data": "bye\n", "close": true})),
            )
            .await;
        assert_eq!(status, 204);
        let (_, done) = server
            .call("POST", &format!("{base}/{cid}/wait?timeout_ms=20000"), None)
            .await;
        assert_eq!(done["end"]["exit_code"], 0, "{done}");
        let (_, page) = server
            .call("GET", &format!("{base}/{cid}/output?cursor=6"), None)
            .await;
        let rest: String = page["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["data"].as_str().unwrap())
            .collect();
        assert_eq!(rest, "bye\ndone\n", "{page}");
        assert_eq!(page["end"]["exit_code"], 0, "{page}");
        let (status, err) = server
            .call(
                "POST",
                &format!("{base}/{cid}/stdin"),
                Some(json!({"data": "late"})),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (409, Some("conflict")),
            "{err}"
        );
        // A signal ends the sleeper.
        let (status, _) = server
            .call(
                "POST",
                &format!("{base}/{sleeper}/signal"),
                Some(json!({"signal": "TERM"})),
            )
            .await;
        assert_eq!(status, 204);
        let (_, done) = server
            .call(
                "POST",
                &format!("{base}/{sleeper}/wait?timeout_ms=20000"),
                None,
            )
            .await;
        assert_eq!(done["end"]["signal"], 15, "{done}");
        let (_, list) = server.call("GET", &base, None).await;
        assert!(list["commands"].as_array().unwrap().len() >= 2, "{list}");

        let (status, _) = server
            .call("DELETE", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 204);
        let (status, err) = server
            .call("GET", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (404, Some("not_found")),
            "{err}"
        );
        assert!(
            err["message"].as_str().unwrap().contains("destroyed"),
            "{err}"
        );
    });
}

#[test]
fn files_stream_both_ways_and_directories_copy_as_tar() {
    let server = Server::start("api-files", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let id = create(&server, json!({})).await;
        let base = format!("/v1/sandboxes/{id}");
        // 64 MiB up and down, compared by SHA-256.
        let mut data = vec![0u8; 64 << 20];
        getrandom::getrandom(&mut data).unwrap();
        let want = hex::encode(Sha256::digest(&data));
        let (status, _, body) = server
            .raw(
                "PUT",
                &format!("{base}/files?path=/work/big.bin&mode=600"),
                Some(Bytes::from(data)),
            )
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let out = exec(
            &server,
            &id,
            json!({"cmd": "sha256sum /work/big.bin; stat -c %a /work/big.bin"}),
        )
        .await;
        assert!(out["stdout"].as_str().unwrap().starts_with(&want), "{out}");
        assert!(out["stdout"].as_str().unwrap().ends_with("600\n"), "{out}");
        let (status, _, body) = server
            .raw("GET", &format!("{base}/files?path=/work/big.bin"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(hex::encode(Sha256::digest(&body)), want);

        // mkdir, stat, list, remove.
        let (status, _) = server
            .call(
                "POST",
                &format!("{base}/files/mkdir"),
                Some(json!({"path": "/work/d/e", "parents": true})),
            )
            .await;
        assert_eq!(status, 204);
        let (_, st) = server
            .call("GET", &format!("{base}/files/stat?path=/work/d/e"), None)
            .await;
        assert_eq!(st["kind"], "dir", "{st}");
        let (_, ls) = server
            .call("GET", &format!("{base}/files/list?path=/work"), None)
            .await;
        let mut names: Vec<&str> = ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["big.bin", "d"], "{ls}");
        let (status, err) = server
            .call("DELETE", &format!("{base}/files?path=/work/d"), None)
            .await;
        assert_eq!(
            status / 100,
            4,
            "removing a non-empty directory without recursive: {err}"
        );
        let (status, _) = server
            .call(
                "DELETE",
                &format!("{base}/files?path=/work/d&recursive=true"),
                None,
            )
            .await;
        assert_eq!(status, 204);
        let (status, err) = server
            .call("GET", &format!("{base}/files/stat?path=/work/d"), None)
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (404, Some("not_found")),
            "{err}"
        );
        let (status, err) = server
            .call("GET", &format!("{base}/files?path=/work/missing"), None)
            .await;
        assert_eq!(status, 404, "{err}");

        // A directory in and out as tar.
        let local = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(local.path().join("src/sub")).unwrap();
        std::fs::write(local.path().join("src/a.txt"), "alpha").unwrap();
        std::fs::write(local.path().join("src/sub/b.txt"), "beta").unwrap();
        let tar = std::process::Command::new("tar")
            .args([
                "-C",
                local.path().join("src").to_str().unwrap(),
                "-cf",
                "-",
                ".",
            ])
            .output()
            .unwrap();
        assert!(tar.status.success());
        let (status, _, body) = server
            .raw(
                "PUT",
                &format!("{base}/tar?path=/work/tree"),
                Some(Bytes::from(tar.stdout)),
            )
            .await;
        assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
        let out = exec(
            &server,
            &id,
            json!({"cmd": "cat /work/tree/a.txt /work/tree/sub/b.txt"}),
        )
        .await;
        assert_eq!(out["stdout"], "alphabeta");
        exec(
            &server,
            &id,
            json!({"cmd": "echo gamma > /work/tree/sub/c.txt"}),
        )
        .await;
        let (status, _, tarball) = server
            .raw("GET", &format!("{base}/tar?path=/work/tree"), None)
            .await;
        assert_eq!(status, 200);
        let out_dir = local.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let mut untar = std::process::Command::new("tar")
            .args(["-C", out_dir.to_str().unwrap(), "-xf", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &tarball).unwrap();
        drop(untar.stdin.take());
        assert!(untar.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(out_dir.join("sub/c.txt")).unwrap(),
            "gamma\n"
        );
        assert_eq!(
            std::fs::read_to_string(out_dir.join("a.txt")).unwrap(),
            "alpha"
        );
    });
}

#[test]
fn sandboxes_expire_by_lifetime_and_idleness_and_limits_are_refused() {
    let server = Server::start(
        "api-limits",
        false,
        &[
            "--pool-size",
            "1",
            "--max-sandboxes",
            "2",
            "--max-memory",
            "600",
        ],
    );
    rt().block_on(async {
        let short = create(&server, json!({"timeout_s": 2})).await;
        let idle = create(&server, json!({"idle_timeout_s": 2, "timeout_s": 600})).await;
        // Both places taken: the third is refused at once, with a retry hint.
        let (status, headers, body) = server
            .raw(
                "POST",
                "/v1/sandboxes",
                Some(Bytes::from(json!({}).to_string())),
            )
            .await;
        let err: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, err["code"].as_str()),
            (429, Some("limit_reached")),
            "{err}"
        );
        assert!(
            err["message"].as_str().unwrap().contains("--max-sandboxes"),
            "{err}"
        );
        assert!(
            headers.iter().any(|(k, _)| k == "retry-after"),
            "{headers:?}"
        );
        // The idle one is used now and then, for less than its idle timeout.
        for _ in 0..3 {
            exec(&server, &idle, json!({"argv": ["true"]})).await;
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        let (status, err) = server
            .call("GET", &format!("/v1/sandboxes/{short}"), None)
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (410, Some("sandbox_expired")),
            "{err}"
        );
        assert!(
            err["message"].as_str().unwrap().contains("lifetime"),
            "{err}"
        );
        let (status, info) = server
            .call("GET", &format!("/v1/sandboxes/{idle}"), None)
            .await;
        assert_eq!(
            status, 200,
            "used within its idle timeout, it lives: {info}"
        );
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let (status, err) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{idle}/exec"),
                Some(json!({"argv": ["true"]})),
            )
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (410, Some("sandbox_expired")),
            "{err}"
        );
        assert!(err["message"].as_str().unwrap().contains("idle"), "{err}");
        // Memory: 256 in use, 512 more would pass --max-memory 600.
        let _kept = create(&server, json!({})).await;
        let (status, err) = server
            .call("POST", "/v1/sandboxes", Some(json!({"memory_mib": 512})))
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (429, Some("limit_reached")),
            "{err}"
        );
        assert!(
            err["message"].as_str().unwrap().contains("--max-memory"),
            "{err}"
        );
        // Extending the lifetime.
        let (status, info) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{_kept}/timeout"),
                Some(json!({"timeout_s": 1000})),
            )
            .await;
        assert_eq!(status, 200, "{info}");
        assert!(info["expires_at"].as_u64().unwrap() >= info["created_at"].as_u64().unwrap() + 990);
    });
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let server = Server::start("api-input", false, &["--pool-size", "0"]);
    rt().block_on(async {
        let cases: &[(&str, &str, &str)] = &[
            (
                "/v1/sandboxes",
                r#"{"timeout_s": 10, "netwrok": true}"#,
                "netwrok",
            ),
            ("/v1/sandboxes", r#"{"timeout_s": "ten"}"#, "timeout_s"),
            ("/v1/sandboxes", r#"{"timeout_s": 0}"#, "timeout_s"),
            ("/v1/sandboxes", r#"{"image": "../../etc/passwd"}"#, "image"),
            ("/v1/sandboxes", r#"{"cwd": "relative/dir"}"#, "cwd"),
            ("/v1/sandboxes", r#"{"env": {"A=B": "x"}}"#, "env"),
            ("/v1/sandboxes", r#"{"vcpus": 1000}"#, "vcpus"),
            ("/v1/sandboxes", r#"{not json"#, "invalid JSON"),
        ];
        for (path, body, field) in cases {
            let (status, _, answer) = server.raw("POST", path, Some(Bytes::from(*body))).await;
            let err: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            assert_eq!(
                (status, err["code"].as_str()),
                (400, Some("bad_request")),
                "{body}: {err}"
            );
            assert!(
                err["message"].as_str().unwrap().contains(field),
                "{body}: {err}"
            );
        }
        let id = create(&server, json!({})).await;
        let bad_exec: &[(Value, &str)] = &[
            (json!({"cmd": "true", "argv": ["true"]}), "argv or cmd"),
            (json!({}), "argv"),
            (json!({"cmd": "true", "timeout_s": -1}), "timeout_s"),
            (
                json!({"cmd": "true", "stdin": "%%%", "stdin_encoding": "base64"}),
                "stdin",
            ),
            (
                json!({"cmd": "true", "max_output_bytes": 1u64 << 40}),
                "max_output_bytes",
            ),
        ];
        for (body, field) in bad_exec {
            let (status, err) = server
                .call(
                    "POST",
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(status, 400, "{body}: {err}");
            assert!(
                err["message"].as_str().unwrap().contains(field),
                "{body}: {err}"
            );
        }
        let (status, err) = server
            .call(
                "GET",
                &format!("/v1/sandboxes/{id}/files/stat?path=etc"),
                None,
            )
            .await;
        assert!(
            status == 400 && err["message"].as_str().unwrap().contains("path"),
            "{err}"
        );
        let (status, err) = server
            .call(
                "GET",
                &format!("/v1/sandboxes/{id}/files/stat?paht=/etc"),
                None,
            )
            .await;
        assert!(
            status == 400 && err["message"].as_str().unwrap().contains("paht"),
            "{err}"
        );
        let (status, _) = server.call("GET", "/v1/sandboxes/sb-nope", None).await;
        assert_eq!(status, 404);
        // The document it serves is the committed one.
        let (status, _, doc) = server.raw("GET", "/openapi.json", None).await;
        assert_eq!(status, 200);
        assert!(
            String::from_utf8_lossy(&doc) == committed_openapi(),
            "/openapi.json is not docs/api/openapi.json"
        );
        // Metrics in Prometheus text format.
        let (status, _, text) = server.raw("GET", "/metrics", None).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 200);
        assert!(
            text.contains("ironclaw_sandboxes{state=\"running\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ironclaw_sandbox_create_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("ironclaw_pool_misses_total"), "{text}");
    });
}

#[test]
fn tokens_are_required_on_tcp_and_tenants_are_apart() {
    let (a, b) = (new_token(), new_token());
    let root = std::path::PathBuf::from(format!("/tmp/ironclaw-api-tcp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let server = Server::start_with_tokens(root, vec![a.clone(), b.clone()], &["--pool-size", "1"]);
    rt().block_on(async {
        for token in [None, Some("wrong-token-wrong-token-wrong-token")] {
            let (status, err) = server
                .call_tcp(token, "POST", "/v1/sandboxes", Some(json!({})))
                .await;
            assert_eq!(
                (status, err["code"].as_str()),
                (401, Some("unauthorized")),
                "{err}"
            );
        }
        let (_, list) = server
            .call_tcp(Some(&a), "GET", "/v1/sandboxes", None)
            .await;
        assert_eq!(
            list["sandboxes"],
            json!([]),
            "a refused create made nothing"
        );
        let (status, sb) = server
            .call_tcp(Some(&a), "POST", "/v1/sandboxes", Some(json!({})))
            .await;
        assert_eq!(status, 201, "{sb}");
        let id = sb["id"].as_str().unwrap();
        let (_, list) = server
            .call_tcp(Some(&b), "GET", "/v1/sandboxes", None)
            .await;
        assert_eq!(list["sandboxes"], json!([]), "b does not see a's sandbox");
        let (status, _) = server
            .call_tcp(Some(&b), "GET", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 404);
        let (status, _) = server
            .call_tcp(Some(&b), "DELETE", &format!("/v1/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 404);
        let (status, _) = server
            .call_tcp(
                Some(&b),
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"cmd": "true"})),
            )
            .await;
        assert_eq!(status, 404);
        // Nor does the unix socket's user (another tenant: a uid).
        let (_, list) = server.call("GET", "/v1/sandboxes", None).await;
        assert_eq!(list["sandboxes"], json!([]));
        let (_, list) = server
            .call_tcp(Some(&a), "GET", "/v1/sandboxes", None)
            .await;
        assert_eq!(list["sandboxes"][0]["id"], id);
    });
}

fn vm_dirs(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigterm_destroys_everything_and_a_killed_service_is_cleaned_by_the_next() {
    let mut server = Server::start("api-stop", false, &["--pool-size", "1"]);
    let root = server.root.clone();
    rt().block_on(async {
        create(&server, json!({})).await;
        create(&server, json!({})).await;
    });
    assert!(!service_support::vm_processes_under(&root).is_empty());
    let status = server.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", server.log_text());
    assert!(service_support::vm_processes_under(&root).is_empty());
    assert_eq!(
        vm_dirs(&root),
        Vec::<String>::new(),
        "socket and VM directories removed"
    );

    // SIGKILL leaves VMs behind; the next start removes them.
    let mut server = Server::start_in(root.clone(), false, &["--pool-size", "1"]);
    rt().block_on(async {
        create(&server, json!({})).await;
    });
    server.stop_with(libc::SIGKILL);
    // The service could not clean up: its socket and VM directories stay
    // (the VM processes die with it, by their parent-death signal).
    let left = vm_dirs(&root);
    assert!(left.iter().any(|d| d.starts_with("pool-")), "{left:?}");
    assert!(left.contains(&"ironclaw.sock".to_string()), "{left:?}");
    let mut server = Server::start_in(root.clone(), false, &["--pool-size", "0"]);
    assert!(
        service_support::vm_processes_under(&root).is_empty(),
        "{}",
        server.log_text()
    );
    assert_eq!(vm_dirs(&root), vec!["ironclaw.sock".to_string()]);
    server.stop_with(libc::SIGTERM);
    assert_eq!(vm_dirs(&root), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&root);
}

fn committed_openapi_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api/openapi.json")
}

fn committed_openapi() -> String {
    std::fs::read_to_string(committed_openapi_path()).unwrap_or_default()
}

/// `docs/api/openapi.json` is what the code generates. After a change to
/// the API, regenerate it with `IRONCLAW_UPDATE_OPENAPI=1 cargo test --test service_api openapi`.
#[test]
fn openapi_document_is_the_committed_one() {
    let generated = ironclaw_orchestrator::service::api::openapi::document();
    if std::env::var_os("IRONCLAW_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(committed_openapi_path().parent().unwrap()).unwrap();
        std::fs::write(committed_openapi_path(), &generated).unwrap();
    }
    assert!(
        committed_openapi() == generated,
        "docs/api/openapi.json differs from the code's document; regenerate it with \
         IRONCLAW_UPDATE_OPENAPI=1 cargo test -p ironclaw-orchestrator --test service_api openapi"
    );
}

/// TCP without a token file, or with one others can read, is refused before
/// anything starts, naming the flag.
#[test]
fn tcp_needs_a_private_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::path::PathBuf::from(format!("/tmp/ironclaw-api-refuse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let serve = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ironclaw"))
            .env("IRONCLAW_RUNTIME_DIR", &root)
            .arg("serve")
            .args(extra)
            .output()
            .unwrap()
    };
    let out = serve(&["--listen", "127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--listen") && err.contains("--token-file"),
        "{err}"
    );
    let token = root.join("token");
    std::fs::write(&token, format!("{}\n", new_token())).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve(&[
        "--listen",
        "127.0.0.1:1",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--token-file") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::write(&token, "short\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = serve(&[
        "--listen",
        "127.0.0.1:1",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shorter than"), "{err}");
    assert!(!root.join("ironclaw.sock").exists(), "nothing was started");
    let _ = std::fs::remove_dir_all(&root);
}

/// Pids of the processes whose command line names the VM's runtime directory.
fn vm_pids(root: &std::path::Path, vm_id: &str, what: &str) -> Vec<i32> {
    let needle = format!("{}/{vm_id}/", root.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?)
                .replace('\0', " ");
            (cmd.contains(&needle) && cmd.contains(what)).then_some(pid)
        })
        .collect()
}

/// A VMM killed outright, or the guest agent killed from inside the guest
/// (by a command: its parent), mid-exec and mid-upload: the caller gets a
/// clear error, the sandbox is destroyed and cleaned up, the service goes on
/// serving the others.
#[test]
fn a_killed_vmm_or_agent_fails_its_sandbox_only() {
    let server = Server::start("api-fault", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let bystander = create(&server, json!({})).await;
        for (mid, killed) in [
            ("exec", "qemu"),
            ("upload", "qemu"),
            ("exec", "agent"),
            ("upload", "agent"),
        ] {
            let (_, sb) = server.call("POST", "/v1/sandboxes", Some(json!({}))).await;
            let (id, vm_id) = (
                sb["id"].as_str().unwrap().to_string(),
                sb["vm_id"].as_str().unwrap().to_string(),
            );
            // The upload's body comes from a channel: some data, then the
            // kill, then more (the request is mid-transfer when QEMU dies).
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(2);
            let request = {
                let socket = server.socket.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    if mid == "exec" {
                        let body = json!({"cmd": "sleep 60"}).to_string();
                        return service_support::unix_request(
                            &socket,
                            "POST",
                            &format!("/v1/sandboxes/{id}/exec"),
                            Some(Bytes::from(body)),
                            &[],
                        )
                        .await;
                    }
                    let stream = tokio::net::UnixStream::connect(&socket).await?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .map_err(std::io::Error::other)?;
                    tokio::spawn(conn);
                    let frames = futures::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|f| (f, rx))
                    });
                    let req =
                        hyper::Request::put(format!("/v1/sandboxes/{id}/files?path=/work/big"))
                            .header("host", "x")
                            .body(http_body_util::StreamBody::new(frames))
                            .unwrap();
                    let resp = sender
                        .send_request(req)
                        .await
                        .map_err(std::io::Error::other)?;
                    let status = resp.status().as_u16();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(std::io::Error::other)?
                        .to_bytes();
                    Ok((status, Vec::new(), body))
                })
            };
            let chunk = Bytes::from(vec![7u8; 1 << 20]);
            if mid == "upload" {
                for _ in 0..4 {
                    tx.send(Ok(hyper::body::Frame::data(chunk.clone())))
                        .await
                        .unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if killed == "qemu" {
                let qemu = vm_pids(&server.root, &vm_id, "qemu-system");
                assert_eq!(qemu.len(), 1, "one QEMU for {vm_id}");
                unsafe { libc::kill(qemu[0], libc::SIGKILL) };
            } else {
                // Root in the guest kills the agent that runs its command.
                let (status, out) = server
                    .call(
                        "POST",
                        &format!("/v1/sandboxes/{id}/exec"),
                        Some(json!({"cmd": "kill -9 $PPID; sleep 10"})),
                    )
                    .await;
                assert_eq!(status / 100, 5, "{mid}/{killed}: the killing exec: {out}");
            }
            let t0 = Instant::now();
            if mid == "upload" {
                // More data after the kill, as long as the service takes it.
                let feeder = tokio::spawn(async move {
                    for _ in 0..64 {
                        if tx
                            .send(Ok(hyper::body::Frame::data(chunk.clone())))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                drop(feeder);
            }
            let answer = tokio::time::timeout(Duration::from_secs(30), request)
                .await
                .unwrap()
                .unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{mid}: the error took {:?}",
                t0.elapsed()
            );
            match answer {
                Ok((status, _, body)) => {
                    let err: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    assert_eq!(status / 100, 5, "{mid}/{killed}: {err}");
                    assert!(
                        err["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "{mid}/{killed}: {err}"
                    );
                }
                // The service answered and closed the connection while this
                // client was still sending the upload's body: hyper's client
                // reports the cut body rather than the answer.
                Err(e) if mid == "upload" && format!("{e:?}").contains("BodyWrite") => {}
                Err(e) => panic!("{mid}/{killed}: {e}"),
            }
            // The sandbox is gone, saying why, and so is everything of its VM.
            let (status, gone) = server
                .call("GET", &format!("/v1/sandboxes/{id}"), None)
                .await;
            assert_eq!(status, 404, "{mid}: {gone}");
            let deadline = Instant::now() + Duration::from_secs(10);
            while server.root.join(&vm_id).exists() || !vm_pids(&server.root, &vm_id, "").is_empty()
            {
                assert!(Instant::now() < deadline, "{mid}: {vm_id} left behind");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The others are served as before.
            let out = exec(&server, &bystander, json!({"argv": ["echo", "still here"]})).await;
            assert_eq!(out["stdout"], "still here\n");
        }
    });
}

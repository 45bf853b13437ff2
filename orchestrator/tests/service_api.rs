//! The REST API of `ironclaw serve`, end to end: the real service binary,
//! real VMs, requests over its real unix socket and TCP port.

mod service_support;

use serde_json::json;
use service_support::Server;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sandbox_keeps_state_between_execs() {
    let server = Server::start("api-state", false, &["--pool-size", "1"]);
    rt().block_on(async {
        let (status, sb) = server
            .call("POST", "/v1/sandboxes", Some(json!({"timeout_s": 120})))
            .await;
        assert_eq!(status, 201, "{sb}");
        let id = sb["id"].as_str().unwrap().to_string();
        let (status, out) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"cmd": "echo 42 > /work/x"})),
            )
            .await;
        assert_eq!((status, out["exit_code"].as_i64()), (200, Some(0)), "{out}");
        let (_, out) = server
            .call(
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                Some(json!({"argv": ["cat", "/work/x"]})),
            )
            .await;
        assert_eq!(out["stdout"], "42\n", "{out}");
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
    });
}

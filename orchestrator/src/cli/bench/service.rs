//! The sandbox service's share of the time: the REST API (a real service on
//! a private unix socket, called over HTTP as a client would) against the
//! library calls it wraps, in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::{json, Value};

use ironclaw_orchestrator::listen::{Access, PrivateListener};
use ironclaw_orchestrator::service::api::{self, Caller, Tokens, UnixCallers};
use ironclaw_orchestrator::service::{Owner, Service, ServiceConfig};
use ironclaw_orchestrator::vm::pool::{Pool, PoolConfig};
use ironclaw_orchestrator::vm::{self, VmConfig};

use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::ServiceExt;

use super::super::sandbox::client::Client;
use super::stats::{median, ms};

/// Sandboxes created at once in the concurrency measurement.
pub const CONCURRENT: usize = 20;

async fn rest_create(client: &Client) -> anyhow::Result<String> {
    let sb = client
        .json(Method::POST, "/v1/sandboxes", Some(&json!({})))
        .await?;
    sb["id"]
        .as_str()
        .map(String::from)
        .context("no id in the answer")
}

async fn rest_exec_true(client: &Client, id: &str) -> anyhow::Result<()> {
    let out = client
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(&json!({"argv": ["true"]})),
        )
        .await?;
    if out["exit_code"] != json!(0) {
        bail!("`true` failed through the API: {out}");
    }
    Ok(())
}

async fn rest_destroy(client: &Client, id: &str) -> anyhow::Result<Value> {
    client
        .json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await
}

/// Waits until the service's pools have `n` clones ready.
async fn service_ready(service: &Service, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while service
        .pool_stats()
        .iter()
        .map(|(_, s)| s.ready)
        .sum::<usize>()
        < n
    {
        if Instant::now() > deadline {
            bail!(
                "the service's pool did not fill: {:?}",
                service.pool_stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Exec round trips of `true` through MCP: `ironclaw mcp` (this binary) as
/// a child over stdio, driven by rmcp's client, as a desktop agent does.
async fn mcp_exec_round_trips(runs: usize) -> anyhow::Result<Vec<Duration>> {
    let exe = std::env::current_exe().context("the ironclaw binary")?;
    let transport = TokioChildProcess::new(tokio::process::Command::new(exe).configure(|c| {
        c.args(["mcp", "--pool-size", "1"])
            .stderr(std::process::Stdio::null());
    }))?;
    let client = ().serve(transport).await.context("MCP initialize")?;
    let call = |name: &'static str, args: Value| {
        let args = args.as_object().cloned().unwrap_or_default();
        client.call_tool(CallToolRequestParams::new(name).with_arguments(args))
    };
    let created = call("sandbox_create", json!({})).await?;
    let id = created
        .structured_content
        .as_ref()
        .and_then(|c| c["id"].as_str())
        .map(String::from)
        .with_context(|| format!("sandbox_create answered {created:?}"))?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = call("sandbox_exec", json!({"sandbox_id": id, "argv": ["true"]})).await?;
        times.push(t0.elapsed());
        if out.is_error != Some(false) {
            bail!("`true` failed through MCP: {out:?}");
        }
    }
    call("sandbox_destroy", json!({"sandbox_id": id})).await?;
    client.cancel().await.context("closing the MCP session")?;
    Ok(times)
}

/// A real service in this process on a private unix socket, and a client
/// of it, as `ironclaw serve` and `ironclaw sandbox` would be.
pub struct LocalService {
    pub service: Service,
    pub client: Client,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    dir: std::path::PathBuf,
}

impl LocalService {
    pub fn start(config: ServiceConfig, name: &str) -> anyhow::Result<LocalService> {
        let dir = vm::runtime::runtime_root().join(format!("{name}-{}", std::process::id()));
        let socket = dir.join("ironclaw.sock");
        let service = Service::new(config);
        let listener = PrivateListener::bind(&socket, Access::default())?;
        let app = api::router(service.clone(), Tokens::default());
        let server = tokio::spawn(async move {
            axum::serve(
                UnixCallers(listener),
                app.into_make_service_with_connect_info::<Caller>(),
            )
            .await
        });
        let client = Client::new(Some(format!("unix:{}", socket.display())), None)?;
        Ok(LocalService {
            service,
            client,
            server,
            dir,
        })
    }

    /// Destroys every sandbox and the pools, stops serving, removes the socket.
    pub async fn stop(self) {
        self.service.shutdown().await;
        self.server.abort();
        let _ = self.server.await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn section(base: &VmConfig, runs: usize) -> anyhow::Result<String> {
    let runs = runs.max(20);
    let mut config = ServiceConfig::new(base.clone());
    config.pool_size = 2;
    config.max_sandboxes = CONCURRENT + 4;
    config.max_memory_mib = (CONCURRENT as u64 + 4) * u64::from(base.memory_mib);
    let local = LocalService::start(config, "bench-serve")?;
    let result = measure(&local.service, &local.client, base, runs).await;
    local.stop().await;
    result
}

async fn measure(
    service: &Service,
    client: &Client,
    base: &VmConfig,
    runs: usize,
) -> anyhow::Result<String> {
    // The library's side: a pool of the same shape as the service's default.
    let mut lib_config = base.clone();
    lib_config.rootfs = ironclaw_orchestrator::userland::default_image();
    let pool = Pool::start(
        &lib_config,
        PoolConfig {
            size: 2,
            max_memory_mib: 8192,
        },
    )
    .await?;
    // The first create starts the service's pool of this shape.
    let first = rest_create(client).await?;
    rest_destroy(client, &first).await?;

    let (mut lib, mut rest) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // Both pools full before each side: no refill of either runs
        // during a measurement.
        let settle = || async {
            if !pool.wait_ready(2, Duration::from_secs(120)).await {
                bail!("the library pool did not fill: {:?}", pool.stats());
            }
            service_ready(service, 2).await
        };
        settle().await?;
        let t0 = Instant::now();
        let vm = pool.acquire().await?;
        vm.agent().run(vm::exec_request(["true"]), None).await?;
        lib.push(t0.elapsed());
        pool.release(vm).await?;

        settle().await?;
        let t0 = Instant::now();
        let id = rest_create(client).await?;
        rest_exec_true(client, &id).await?;
        rest.push(t0.elapsed());
        rest_destroy(client, &id).await?;
    }
    pool.shutdown().await?;

    // Concurrent creates: all requests sent at once; most miss the pool.
    service_ready(service, 2).await?;
    let t0 = Instant::now();
    let creates = (0..CONCURRENT).map(|_| async {
        let id = rest_create(client).await?;
        Ok::<_, anyhow::Error>((id, t0.elapsed()))
    });
    let created: Vec<(String, Duration)> = futures::future::try_join_all(creates).await?;
    let all_ready = created.iter().map(|(_, d)| *d).max().unwrap_or_default();
    for (id, _) in &created {
        rest_destroy(client, id).await?;
    }

    // Exec round trips on one sandbox: through the API and the library call it wraps.
    let id = rest_create(client).await?;
    let owner = Owner::uid(nix::unistd::geteuid().as_raw());
    let agent = service
        .get(&owner, &id)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .agent()
        .clone();
    let (mut lib_exec, mut rest_exec) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        agent.run(vm::exec_request(["true"]), None).await?;
        lib_exec.push(t0.elapsed());
        let t0 = Instant::now();
        rest_exec_true(client, &id).await?;
        rest_exec.push(t0.elapsed());
    }
    rest_destroy(client, &id).await?;
    let mcp_exec = mcp_exec_round_trips(runs).await?;

    let (lib_m, rest_m) = (median(lib.clone()), median(rest.clone()));
    let (lib_e, rest_e) = (median(lib_exec.clone()), median(rest_exec.clone()));
    Ok(format!(
        "\n## Sandbox service (REST API)\n\n\
         A real service on a private unix socket, called over HTTP/1 (a new connection per request, \
         as curl does), against the library calls it wraps; {runs} alternating runs.\n\n\
         | measurement | median ms |\n|---|---:|\n\
         | library: warm-pool `acquire` → first exec result of `true` | {} |\n\
         | REST: `POST /v1/sandboxes` → `POST …/exec` result of `true` | {} |\n\
         | {CONCURRENT} sandboxes created at once through REST: all ready after | {} |\n\
         | library: exec round trip of `true` on a sandbox's VM | {} |\n\
         | REST: `POST …/exec` of `true` on the same sandbox | {} |\n\
         | MCP: `sandbox_exec` of `true` (`ironclaw mcp` over stdio, rmcp's client; its own sandbox of the same shape) | {} |\n\n\
         **REST minus library, create → first result: {:+.1} ms** (goal: the API adds under 5 ms). \
         **Exec through REST / library: {:.2}; through MCP / library: {:.2}** (goal: at most 1.5 each).\n",
        ms(lib_m),
        ms(rest_m),
        ms(all_ready),
        ms(lib_e),
        ms(rest_e),
        ms(median(mcp_exec.clone())),
        (rest_m.as_secs_f64() - lib_m.as_secs_f64()) * 1000.0,
        rest_e.as_secs_f64() / lib_e.as_secs_f64(),
        median(mcp_exec).as_secs_f64() / lib_e.as_secs_f64(),
    ))
}

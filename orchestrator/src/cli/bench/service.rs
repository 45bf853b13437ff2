//! The sandbox service's share of the time: the REST API (a real service on
//! a private unix socket, called over HTTP as a client would) against the
//! library calls it wraps, in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::Method;
use serde_json::{json, Value};

use ironclaw_orchestrator::listen::{Access, PrivateListener};
use ironclaw_orchestrator::service::api::{self, Caller, TcpCallers, Tokens, UnixCallers};
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

/// The official E2B Python SDK, driven from stdin: per line, one
/// `Sandbox.create()` → first `commands.run("true")` result, timed in the
/// script (its imports and the kill after are not), the milliseconds on stdout.
const E2B_DRIVER: &str = r#"
import sys, time
from e2b import Sandbox
for _ in sys.stdin:
    t0 = time.perf_counter()
    sbx = Sandbox.create()
    sbx.commands.run("true")
    dt = time.perf_counter() - t0
    sbx.kill()
    print(f"{dt * 1000:.3f}", flush=True)
"#;

/// A running [`E2B_DRIVER`].
struct E2bDriver {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl E2bDriver {
    /// The virtualenv's python (`target/pyenv`, beside this binary's
    /// directory; or `IRONCLAW_BENCH_PYTHON`); None when there is none.
    fn python() -> Option<std::path::PathBuf> {
        if let Some(p) = std::env::var_os("IRONCLAW_BENCH_PYTHON") {
            return Some(p.into());
        }
        let exe = std::env::current_exe().ok()?;
        let python = exe.parent()?.parent()?.join("pyenv/bin/python");
        python.is_file().then_some(python)
    }

    fn start(url: &str, token: &str) -> anyhow::Result<Option<E2bDriver>> {
        let Some(python) = Self::python() else {
            return Ok(None);
        };
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", E2B_DRIVER])
            .env("E2B_API_URL", url)
            .env("E2B_SANDBOX_URL", url)
            .env("E2B_API_KEY", token)
            .env_remove("E2B_DEBUG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().context("the driver's stdin")?;
        let stdout = child.stdout.take().context("the driver's stdout")?;
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        Ok(Some(E2bDriver {
            _child: child,
            stdin,
            lines,
        }))
    }

    async fn once(&mut self) -> anyhow::Result<Duration> {
        tokio::io::AsyncWriteExt::write_all(&mut self.stdin, b"go\n").await?;
        let line = self.lines.next_line().await?.context(
            "the E2B SDK driver ended (is the e2b package in target/pyenv? scripts/setup.sh)",
        )?;
        let ms: f64 = line
            .trim()
            .parse()
            .with_context(|| format!("the E2B SDK driver said {line:?}"))?;
        Ok(Duration::from_secs_f64(ms / 1000.0))
    }
}

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
pub(super) async fn service_ready(service: &Service, n: usize) -> anyhow::Result<()> {
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
    /// With `e2b`: the TCP address (`http://127.0.0.1:PORT`) serving the
    /// native and the E2B routes, and its token.
    pub tcp_url: Option<String>,
    pub token: Option<String>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: std::path::PathBuf,
    snapshot_dir: std::path::PathBuf,
}

impl LocalService {
    /// The service on a private unix socket; with `e2b` also on a local TCP
    /// port with a fresh token and the E2B routes (the E2B SDK needs TCP).
    pub async fn start(
        mut config: ServiceConfig,
        name: &str,
        e2b: bool,
    ) -> anyhow::Result<LocalService> {
        let dir = vm::runtime::runtime_root().join(format!("{name}-{}", std::process::id()));
        let socket = dir.join("ironclaw.sock");
        config.snapshots.dir = ironclaw_orchestrator::service::snapshots::process_dir(name);
        let snapshot_dir = config.snapshots.dir.clone();
        let service = Service::new(config)?;
        let listener = PrivateListener::bind(&socket, Access::default())?;
        let token = if e2b {
            let mut b = [0u8; 32];
            getrandom::getrandom(&mut b).context("randomness for a token")?;
            Some(hex::encode(b))
        } else {
            None
        };
        let tokens = Tokens::new(token.iter().cloned().collect());
        let mut app = api::router(service.clone(), tokens.clone());
        if e2b {
            app = app.merge(ironclaw_orchestrator::service::e2b::router(
                service.clone(),
                tokens,
            ));
        }
        let unix_app = app.clone();
        let mut servers = vec![tokio::spawn(async move {
            axum::serve(
                UnixCallers(listener),
                unix_app.into_make_service_with_connect_info::<Caller>(),
            )
            .await
        })];
        let mut tcp_url = None;
        if e2b {
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            tcp_url = Some(format!("http://{}", tcp.local_addr()?));
            servers.push(tokio::spawn(async move {
                axum::serve(
                    TcpCallers(tcp),
                    app.into_make_service_with_connect_info::<Caller>(),
                )
                .await
            }));
        }
        let client = Client::new(Some(format!("unix:{}", socket.display())), None)?;
        Ok(LocalService {
            service,
            client,
            tcp_url,
            token,
            servers,
            dir,
            snapshot_dir,
        })
    }

    /// Destroys every sandbox and the pools, stops serving, removes the socket.
    pub async fn stop(self) {
        self.service.shutdown().await;
        for s in self.servers {
            s.abort();
            let _ = s.await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.snapshot_dir);
    }
}

pub async fn section(base: &VmConfig, runs: usize) -> anyhow::Result<String> {
    let runs = runs.max(20);
    let mut config = ServiceConfig::new(base.clone());
    config.pool_size = 2;
    config.max_sandboxes = CONCURRENT + 4;
    config.max_memory_mib = (CONCURRENT as u64 + 4) * u64::from(base.memory_mib);
    let local = LocalService::start(config, "bench-serve", true).await?;
    let e2b = match (&local.tcp_url, &local.token) {
        (Some(url), Some(token)) => E2bDriver::start(url, token)?,
        _ => None,
    };
    let result = measure(&local.service, &local.client, base, runs, e2b).await;
    local.stop().await;
    result
}

async fn measure(
    service: &Service,
    client: &Client,
    base: &VmConfig,
    runs: usize,
    mut e2b: Option<E2bDriver>,
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

    let (mut lib, mut rest, mut sdk) = (Vec::new(), Vec::new(), Vec::new());
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

        if let Some(driver) = e2b.as_mut() {
            settle().await?;
            sdk.push(driver.once().await?);
        }
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
    let (sdk_row, sdk_line) = if sdk.is_empty() {
        (
            "| E2B Python SDK: `Sandbox.create()` → `commands.run(\"true\")` result | not measured: no target/pyenv (scripts/setup.sh) |\n".to_string(),
            String::new(),
        )
    } else {
        let sdk_m = median(sdk);
        (
            format!(
                "| E2B Python SDK (`e2b` from PyPI, unchanged): `Sandbox.create()` → `commands.run(\"true\")` result, \
                 against the same service's E2B-compatible API on TCP | {} |\n",
                ms(sdk_m)
            ),
            format!(
                " **E2B SDK minus REST, create → first result: {:+.1} ms.**",
                (sdk_m.as_secs_f64() - rest_m.as_secs_f64()) * 1000.0
            ),
        )
    };
    let (lib_e, rest_e) = (median(lib_exec.clone()), median(rest_exec.clone()));
    Ok(format!(
        "\n## Sandbox service (REST API)\n\n\
         A real service on a private unix socket, called over HTTP/1 (a new connection per request, \
         as curl does), against the library calls it wraps; {runs} alternating runs.\n\n\
         | measurement | median ms |\n|---|---:|\n\
         | library: warm-pool `acquire` → first exec result of `true` | {} |\n\
         | REST: `POST /v1/sandboxes` → `POST …/exec` result of `true` | {} |\n\
         {sdk_row}\
         | {CONCURRENT} sandboxes created at once through REST: all ready after | {} |\n\
         | library: exec round trip of `true` on a sandbox's VM | {} |\n\
         | REST: `POST …/exec` of `true` on the same sandbox | {} |\n\
         | MCP: `sandbox_exec` of `true` (`ironclaw mcp` over stdio, rmcp's client; its own sandbox of the same shape) | {} |\n\n\
         **REST minus library, create → first result: {:+.1} ms** (goal: the API adds under 5 ms). \
         **Exec through REST / library: {:.2}; through MCP / library: {:.2}** (goal: at most 1.5 each).{sdk_line}\n",
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

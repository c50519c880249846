//! `agentmesh demo-agent`: a demo agent process, optionally registered with a node.

use super::*;

/// How long `--register` keeps retrying while the node comes up.
pub const DEMO_REGISTER_WAIT_MS: u64 = 30_000;

pub(crate) async fn demo_agent(a: DemoAgentArgs) -> CmdResult {
    let opts = DemoAgentOptions {
        name: a.name.clone(),
        latency_ms_p50: a.latency_ms_p50,
        latency_ms_p99: a.latency_ms_p99,
        error_rate: a.error_rate,
        seed: a.seed,
        capabilities: a.capabilities.clone(),
        forward: match (&a.forward, a.node_api.as_ref().or(a.register.as_ref())) {
            (Some(cap), Some(api)) => Some((api.clone(), cap.clone())),
            (Some(_), None) => {
                return Err(fail(
                    exit::USAGE,
                    "--forward needs --node-api or --register",
                ))
            }
            (None, _) => None,
        },
        answers: crate::agent::demo::parse_answers(&a.answer).map_err(|e| fail(exit::USAGE, e))?,
        error_status: a.error_status,
        fail_while_file: a.fail_while_file.clone(),
        fail_complex_rate: a.fail_complex_rate,
    };
    opts.validate().map_err(|e| fail(exit::USAGE, e))?;
    let (listener, addr) = crate::agent::demo::bind(a.listen)
        .await
        .map_err(|e| fail(exit::FAILURE, format!("--listen {}: {e}", a.listen)))?;
    if let Some(p) = &a.addr_file {
        std::fs::write(p, format!("{addr}\n"))
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", p.display())))?;
    }
    tracing::info!(name = %a.name, %addr, "demo agent serving");
    let server = tokio::spawn(crate::agent::demo::serve(listener, opts, async {
        wait_for_signal().await;
    }));
    if let Some(api) = &a.register {
        register_demo(&a, api, addr).await?;
    }
    server
        .await
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?
        .map_err(|e| fail(exit::FAILURE, e.to_string()))
}

pub(crate) async fn register_demo(a: &DemoAgentArgs, api: &str, addr: SocketAddr) -> CmdResult {
    let caps: Vec<serde_json::Value> = a
        .capabilities
        .iter()
        .map(|c| serde_json::json!({"name": c, "proficiency": a.proficiency, "cost": a.cost}))
        .collect();
    let reg = serde_json::json!({
        "name": a.name, "handler": format!("http://{addr}"), "capabilities": caps,
    });
    let api_args = ApiArgs {
        api: api.to_string(),
        token: std::env::var("AGENTMESH_API_TOKEN").ok(),
    };
    let c = client(Duration::from_millis(CLI_HTTP_TIMEOUT_MS))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEMO_REGISTER_WAIT_MS);
    loop {
        let sent = authed(c.put(url(&api_args, "/v1/agent")), &api_args)
            .header("content-type", "application/json")
            .body(reg.to_string())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                read_ok(&api_args, resp).await?;
                tracing::info!(api, "registered with node");
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(unreachable(&api_args, e));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

//! Harness for the cross-process tests: builds the `agentmesh` binary, starts real node and
//! demo-agent processes on loopback, and kills them on drop.
//!
//! **Finding the binary.** `env!("CARGO_BIN_EXE_agentmesh")` only exists inside the crate that
//! defines the binary, so this crate asks cargo itself: the first test that needs the binary runs
//! `$CARGO build -p agentmesh-node -p agentmesh-tests --bin agentmesh --message-format=json` (same
//! profile and feature set as the tests, same `CARGO_TARGET_DIR`) and takes the path from the `executable` field of the
//! artifact message. The build is a no-op when the binary is fresh. Set `AGENTMESH_BIN` to
//! skip the build and use a given binary.
//!
//! **No fixed sleeps.** Every wait is [`wait_until`]: a condition polled until it holds or a
//! timeout passes, and the timeout's message says what was awaited and what was last seen.
//!
//! **Cleanup.** Every process started goes into a [`Procs`] guard, whose `Drop` SIGKILLs and
//! reaps whatever is still running, also when a test panics.
#![forbid(unsafe_code)]

pub mod load;
pub mod netns;

use anyhow::{bail, Context, Result};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Poll interval of [`wait_until`].
pub const POLL_INTERVAL_MS: u64 = 100;
/// How long a started node may take to write its state file.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a started demo agent may take to write its address file.
pub const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Records that `test` did not run and why: on stderr (captured by the test runner) and as one
/// line appended to the file named by `$AGENTMESH_SKIP_FILE`, which `scripts/test` prints after
/// the run, so a skip shows in CI's output and not only inside captured test output.
pub fn report_skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os("AGENTMESH_SKIP_FILE") {
        use std::io::Write;
        let line = format!("SKIPPED {test}: {why}\n");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        if let Err(e) = f.and_then(|mut f| f.write_all(line.as_bytes())) {
            eprintln!(
                "could not record the skip in {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `agentmesh` binary: `$AGENTMESH_BIN`, or built once per test process with cargo.
pub fn agentmesh_bin() -> &'static Path {
    BIN.get_or_init(|| match std::env::var_os("AGENTMESH_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_bin().expect("building the agentmesh binary"),
    })
}

fn build_bin() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "agentmesh-node",
        // Selecting this crate too gives the same feature unification as `cargo test -p
        // agentmesh-tests`, so the two builds share artifacts instead of rebuilding libp2p.
        "-p",
        "agentmesh-tests",
        "--bin",
        "agentmesh",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .current_dir(manifest_dir())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build -p agentmesh-node failed: {}", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "agentmesh" {
            if let Some(exe) = v["executable"].as_str() {
                return private_copy(Path::new(exe));
            }
        }
    }
    bail!("cargo build printed no executable for agentmesh")
}

/// This crate's directory at run time. cargo may reuse a test binary built in another checkout
/// of the workspace (a shared target dir), whose compile-time `env!` path no longer exists.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Copies the freshly built binary to a path owned by this checkout. Several checkouts (git
/// worktrees) may share one `CARGO_TARGET_DIR`, and each build re-links the shared
/// `debug/agentmesh`; a private copy keeps a long test run on the binary it built. The copy is
/// written under a temporary name and renamed, so processes still running the old one are safe.
fn private_copy(exe: &Path) -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    manifest_dir().hash(&mut h);
    let dir = exe
        .parent()
        .context("executable has no parent")?
        .join(format!("agentmesh-bin-{:016x}", h.finish()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dst = dir.join("agentmesh");
    let tmp = dir.join(format!("agentmesh.tmp{}", std::process::id()));
    std::fs::copy(exe, &tmp).with_context(|| format!("copying {}", exe.display()))?;
    std::fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
    Ok(dst)
}

/// Polls `cond` every [`POLL_INTERVAL_MS`] until it returns `Ok(Some(v))` or `timeout` passes.
/// `Ok(None)` and `Err` mean "not yet"; the last error is reported on timeout.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("condition false");
    loop {
        match cond().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Processes that are SIGKILLed and reaped on drop.
#[derive(Default)]
pub struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    /// Processes started so far.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// True if none were started.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Takes ownership of a started child.
    pub fn push(&mut self, name: &str, child: Child) -> usize {
        self.children.push((name.to_string(), child));
        self.children.len() - 1
    }

    /// The child's pid.
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].1.id()
    }

    /// Sends SIGKILL (kill -9).
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        self.children[i].1.kill()?;
        self.children[i].1.wait()?;
        Ok(())
    }

    /// Sends SIGTERM.
    pub fn term(&self, i: usize) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid(i) as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        Ok(())
    }

    /// The exit status, if the child has exited.
    pub fn try_exit(&mut self, i: usize) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.children[i].1.try_wait()?)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs an `agentmesh` subcommand to completion and returns its stdout; fails on non-zero exit.
pub fn run_cli(args: &[&str]) -> Result<String> {
    let out = Command::new(agentmesh_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running agentmesh {args:?}"))?;
    if !out.status.success() {
        bail!(
            "agentmesh {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// A UDP port that was free a moment ago (bound then released).
pub fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Which certificate a test node gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Signed by the mesh root with `agentmesh admit`, valid for a day.
    Valid,
    /// Signed by the mesh root, but expired an hour ago.
    Expired,
    /// Valid, but signed by a different root.
    OtherRoot,
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What a test node runs with.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// Capabilities its demo agent offers.
    pub caps: Vec<String>,
    /// Its certificate.
    pub cert: CertKind,
    /// Demo agent error rate.
    pub error_rate: f64,
    /// Demo agent median latency, in ms.
    pub latency_ms_p50: f64,
    /// Index of the node to use as seed (None: the first node, if any).
    pub seed: Option<usize>,
    /// `[node] priority` (None: the default, standard).
    pub priority: Option<String>,
    /// `[agent] max_concurrency` (None: the default).
    pub max_concurrency: Option<u32>,
    /// The demo agent calls this capability through its node while answering.
    pub forward: Option<String>,
    /// TOML appended to the node's config (`[defaults]`, `[capability."…"]` sections).
    pub extra_toml: String,
    /// Lines added to its `[node]` section (e.g. `zone = "a"`).
    pub node_toml: String,
    /// Declared cost per call of every capability (None: the default).
    pub cost: Option<f64>,
    /// Extra demo-agent flags (e.g. `--answer cap={"x":1}`).
    pub agent_args: Vec<String>,
    /// Roles in its certificate, comma-separated (None: `agent`).
    pub roles: Option<String>,
    /// The program run as `PROGRAM node --config node.toml` (None: `agentmesh`), e.g. a
    /// test-only misbehaving node built from this crate.
    pub program: Option<PathBuf>,
}

impl NodeOpts {
    /// A node whose agent offers `caps`, with a valid certificate.
    pub fn caps(caps: &[&str]) -> Self {
        NodeOpts {
            caps: caps.iter().map(|c| c.to_string()).collect(),
            cert: CertKind::Valid,
            error_rate: 0.0,
            latency_ms_p50: 0.0,
            seed: None,
            priority: None,
            max_concurrency: None,
            forward: None,
            extra_toml: String::new(),
            node_toml: String::new(),
            cost: None,
            agent_args: Vec::new(),
            roles: None,
            program: None,
        }
    }
}

/// A started node with its demo agent.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its directory (key, cert, config, logs, state).
    pub dir: PathBuf,
    /// Its node id.
    pub id: String,
    /// Its agent's name.
    pub agent: String,
    /// Its API base URL.
    pub api: String,
    /// Its QUIC address, with `/p2p/<id>`.
    pub addr: String,
    /// Index of the node process in [`Mesh::procs`].
    pub proc_index: usize,
    /// Index of its demo agent's process in [`Mesh::procs`].
    pub agent_proc: usize,
}

impl Node {
    /// Everything the node has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

/// A test mesh: a root, nodes, demo agents, all in a temp dir, all killed on drop.
pub struct Mesh {
    /// Processes; dropped (killed) before `dir` is removed.
    pub procs: Procs,
    /// The nodes started, in order.
    pub nodes: Vec<Node>,
    /// The HTTP client.
    pub http: reqwest::Client,
    root_key: PathBuf,
    mesh_id: String,
    root_pub: String,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// Creates a mesh root with `agentmesh mesh init`.
    pub fn new() -> Result<Mesh> {
        let dir = tempfile::Builder::new().prefix("agentmesh-it-").tempdir()?;
        let root_dir = dir.path().join("root");
        let mesh_id = "it-mesh".to_string();
        let root_pub = run_cli(&[
            "mesh",
            "init",
            "--dir",
            root_dir.to_str().context("utf-8 path")?,
            "--mesh-id",
            &mesh_id,
        ])?;
        Ok(Mesh {
            procs: Procs::default(),
            nodes: vec![],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            root_key: root_dir.join("root.key"),
            mesh_id,
            root_pub,
            dir,
        })
    }

    /// The temp dir everything lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a demo agent and returns its base URL.
    pub async fn start_agent(&mut self, name: &str, opts: &NodeOpts) -> Result<String> {
        self.start_agent_with(name, opts, None).await
    }

    /// Starts a demo agent that may call onward through the node API at `node_api`.
    pub async fn start_agent_with(
        &mut self,
        name: &str,
        opts: &NodeOpts,
        node_api: Option<&str>,
    ) -> Result<String> {
        let addr_file = self.path().join(format!("{name}.addr"));
        let log = std::fs::File::create(self.path().join(format!("{name}.log")))?;
        let mut cmd = Command::new(agentmesh_bin());
        if let (Some(cap), Some(api)) = (&opts.forward, node_api) {
            cmd.args(["demo-agent", "--forward", cap, "--node-api", api]);
        } else {
            cmd.arg("demo-agent");
        }
        let child = cmd
            .args(["--listen", "127.0.0.1:0", "--name", name])
            .args(["--error-rate", &opts.error_rate.to_string()])
            .args(["--latency-ms-p50", &opts.latency_ms_p50.to_string()])
            .args(["--latency-ms-p99", &(opts.latency_ms_p50 * 1.5).to_string()])
            .args(&opts.agent_args)
            .arg("--addr-file")
            .arg(&addr_file)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.procs.push(name, child);
        let addr = wait_until(&format!("{name} address file"), AGENT_START_TIMEOUT, || {
            let p = addr_file.clone();
            async move {
                let s = std::fs::read_to_string(&p).unwrap_or_default();
                Ok((!s.trim().is_empty()).then(|| s.trim().to_string()))
            }
        })
        .await?;
        Ok(format!("http://{addr}"))
    }

    /// Creates a key, a certificate of `opts.cert` kind, a config; starts the demo agent and
    /// the node; waits for its state file. The node joins through node 0 unless it is node 0.
    pub async fn start_node(&mut self, opts: NodeOpts) -> Result<Node> {
        let i = self.nodes.len() + 1;
        let agent = format!("agent-{i}");
        // An agent that calls onward must know its node's API before the node starts.
        let api_port = match &opts.forward {
            Some(_) => Some(free_tcp_port()?),
            None => None,
        };
        let node_api = api_port.map(|p| format!("http://127.0.0.1:{p}"));
        let handler = self
            .start_agent_with(&agent, &opts, node_api.as_deref())
            .await?;
        let dir = self.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("node.key");
        let id = run_cli(&["keygen", "--out", key.to_str().context("utf-8")?])?;
        self.write_cert(
            &dir.join("node.cert"),
            &id,
            opts.cert,
            opts.roles.as_deref(),
        )?;
        let port = free_udp_port()?;
        let seed = match opts.seed {
            Some(s) => Some(self.nodes[s].addr.clone()),
            None => self.nodes.first().map(|n| n.addr.clone()),
        };
        let agent_proc = self.procs.len() - 1;
        let mut toml = self.config(port, seed.as_deref(), &agent, &handler, &opts.caps);
        if let Some(c) = opts.cost {
            toml = toml.replace(
                "[[agent.capabilities]]\n",
                &format!("[[agent.capabilities]]\ncost = {c}\n"),
            );
        }
        if let Some(p) = api_port {
            toml = toml.replace(
                "api_listen = \"127.0.0.1:0\"",
                &format!("api_listen = \"127.0.0.1:{p}\""),
            );
        }
        if let Some(p) = &opts.priority {
            toml = toml.replace("[node]\n", &format!("[node]\npriority = \"{p}\"\n"));
        }
        if !opts.node_toml.is_empty() {
            toml = toml.replace(
                "[node]\n",
                &format!("[node]\n{}\n", opts.node_toml.trim_end()),
            );
        }
        if let Some(m) = opts.max_concurrency {
            toml = toml.replace("[agent]\n", &format!("[agent]\nmax_concurrency = {m}\n"));
        }
        toml.push('\n');
        toml.push_str(&opts.extra_toml);
        std::fs::write(dir.join("node.toml"), toml)?;
        let program = opts.program.as_deref().unwrap_or(agentmesh_bin());
        let (proc_index, api) = self
            .spawn_node_with(program, &format!("node{i}"), &dir)
            .await?;
        let node = Node {
            dir,
            addr: format!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{id}"),
            id,
            agent,
            api,
            proc_index,
            agent_proc,
        };
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Runs `agentmesh node` on the config in `dir` (appending to its `node.log`) and waits
    /// for its state file; returns the process index and the API base URL.
    async fn spawn_node(&mut self, name: &str, dir: &Path) -> Result<(usize, String)> {
        self.spawn_node_with(agentmesh_bin(), name, dir).await
    }

    async fn spawn_node_with(
        &mut self,
        program: &Path,
        name: &str,
        dir: &Path,
    ) -> Result<(usize, String)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let child = Command::new(program)
            .args(["node", "--config"])
            .arg(dir.join("node.toml"))
            .env("RUST_LOG", "info,agentmesh_node=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let proc_index = self.procs.push(name, child);
        let state_file = dir.join("state").join("node.json");
        let api = wait_until(&format!("{name} state file"), NODE_START_TIMEOUT, || {
            let p = state_file.clone();
            async move {
                let Ok(text) = std::fs::read_to_string(&p) else {
                    return Ok(None);
                };
                let v: serde_json::Value = serde_json::from_str(&text)?;
                Ok(v["api"].as_str().map(str::to_string))
            }
        })
        .await
        .with_context(|| format!("{name} log:\n{}", read(&dir.join("node.log"))))?;
        Ok((proc_index, api))
    }

    /// Kills a node with SIGKILL and starts it again on the same directory (key, certificate,
    /// config, state); its demo agent keeps running. Returns the node with its new API URL.
    pub async fn restart_node(&mut self, node: &Node) -> Result<Node> {
        self.procs.kill9(node.proc_index)?;
        // A killed node leaves its state file behind; the new one must write its own.
        let _ = std::fs::remove_file(node.dir.join("state").join("node.json"));
        let name = node
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("node")
            .to_string();
        let (proc_index, api) = self.spawn_node(&name, &node.dir).await?;
        let n = Node {
            proc_index,
            api,
            ..node.clone()
        };
        if let Some(slot) = self.nodes.iter_mut().find(|m| m.id == n.id) {
            *slot = n.clone();
        }
        Ok(n)
    }

    /// The mesh root's public key (peer id text).
    pub fn root_pub(&self) -> &str {
        &self.root_pub
    }

    /// The mesh root key file.
    pub fn root_key(&self) -> &Path {
        &self.root_key
    }

    fn write_cert(
        &self,
        path: &Path,
        node_id: &str,
        kind: CertKind,
        roles: Option<&str>,
    ) -> Result<()> {
        let p = path.to_str().context("utf-8")?;
        let root = self.root_key.to_str().context("utf-8")?;
        match kind {
            CertKind::Valid => {
                run_cli(&[
                    "admit",
                    "--root",
                    root,
                    "--node-pub",
                    node_id,
                    "--roles",
                    roles.unwrap_or("agent"),
                    "--ttl",
                    "1d",
                    "--out",
                    p,
                ])?;
            }
            CertKind::OtherRoot => {
                let other = self.path().join(format!("other-root-{node_id}"));
                let other = other.to_str().context("utf-8")?;
                run_cli(&["mesh", "init", "--dir", other, "--mesh-id", &self.mesh_id])?;
                run_cli(&[
                    "admit",
                    "--root",
                    &format!("{other}/root.key"),
                    "--node-pub",
                    node_id,
                    "--ttl",
                    "1d",
                    "--out",
                    p,
                ])?;
            }
            CertKind::Expired => {
                // The CLI only signs certificates valid from now on, so sign a past window
                // with the library, exactly as `admit` does otherwise.
                let root = agentmesh_crypto::keyfile::load(&self.root_key)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                let cert = agentmesh_crypto::AdmissionCert {
                    mesh_id: self.mesh_id.clone(),
                    node_id: node_id.parse()?,
                    roles: vec!["agent".into()],
                    not_before: now - 7200,
                    not_after: now - 3600,
                }
                .sign(&root)?;
                agentmesh_node::security::certs::save_cert_file(path, &cert)?;
            }
        }
        Ok(())
    }

    fn config(
        &self,
        port: u16,
        seed: Option<&str>,
        agent: &str,
        handler: &str,
        caps: &[String],
    ) -> String {
        let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
        let mut t = format!(
            "[node]\nkey_file = \"node.key\"\ncert_file = \"node.cert\"\nstate_dir = \"state\"\n\
             listen = [\"/ip4/127.0.0.1/udp/{port}/quic-v1\"]\napi_listen = \"127.0.0.1:0\"\n\
             seeds = [{seeds}]\ndrain_timeout_ms = 2000\n\n\
             [mesh]\nadmission = \"enforced\"\nroot_pub = \"{}\"\nmesh_id = \"{}\"\n\n\
             [agent]\nname = \"{agent}\"\nhandler = \"{handler}\"\n",
            self.root_pub, self.mesh_id
        );
        for c in caps {
            t.push_str(&format!("\n[[agent.capabilities]]\nname = \"{c}\"\n"));
        }
        t
    }

    /// `GET {api}{path}` as JSON, with the status.
    pub async fn get(&self, node: &Node, path: &str) -> Result<(u16, serde_json::Value)> {
        let r = self.http.get(format!("{}{path}", node.api)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// `POST {api}{path}` with a JSON body: the status and the JSON answer (null if none).
    pub async fn post_json(
        &self,
        node: &Node,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value)> {
        let r = self
            .http
            .post(format!("{}{path}", node.api))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or_default()))
    }

    /// The members `node` sees, as `(node_id, state)`.
    pub async fn members(&self, node: &Node) -> Result<Vec<(String, String)>> {
        let (status, v) = self.get(node, "/v1/members").await?;
        if status != 200 {
            bail!("GET /v1/members: {status} {v}");
        }
        let list = v["members"].as_array().context("members array")?;
        Ok(list
            .iter()
            .map(|m| {
                (
                    m["node_id"].as_str().unwrap_or("").to_string(),
                    m["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect())
    }

    /// The state `observer` reports for `subject`, if it lists it.
    pub async fn state_of(&self, observer: &Node, subject: &Node) -> Result<Option<String>> {
        Ok(self
            .members(observer)
            .await?
            .into_iter()
            .find(|(id, _)| id == &subject.id)
            .map(|(_, s)| s))
    }

    /// `POST {api}/v1/call/{cap}` with a JSON body and extra headers.
    pub async fn call(
        &self,
        node: &Node,
        cap_and_query: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response> {
        let mut rb = self
            .http
            .post(format!("{}/v1/call/{cap_and_query}", node.api))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        Ok(rb.send().await?)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Bound on a small mesh seeing every capability.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

impl Mesh {
    /// Waits until `node` lists `cap` offered by at least `n` agents.
    pub async fn wait_offers(&self, node: &Node, cap: &str, n: usize) -> Result<()> {
        wait_until(
            &format!("{} to see {n} offer(s) of {cap}", node.agent),
            CONVERGE_TIMEOUT,
            || async {
                let (_, v) = self.get(node, "/v1/capabilities").await?;
                let got = v["capabilities"][cap].as_array().map_or(0, |a| a.len());
                Ok((got >= n).then_some(()))
            },
        )
        .await
    }

    /// Calls `cap` through `node` with an empty JSON body: status, served-by, headers and the
    /// JSON answer (null if not JSON).
    pub async fn call_json(
        &self,
        node: &Node,
        cap: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String, reqwest::header::HeaderMap, serde_json::Value)> {
        let r = self.call(node, cap, "{}", headers).await?;
        let status = r.status().as_u16();
        let by = served_by(&r);
        let h = r.headers().clone();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, by, h, v))
    }

    /// Calls in flight to `node`'s agent now (`GET /v1/agent`).
    pub async fn agent_in_flight(&self, node: &Node) -> Result<u64> {
        let (_, v) = self.get(node, "/v1/agent").await?;
        v["in_flight"].as_u64().context("no in_flight in /v1/agent")
    }
}

/// The `x-mesh-served-by` header of a response, or "".
pub fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-mesh-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

//! Real hosts for failure tests: each node runs in its own Linux network namespace with its own
//! 10.x address, wired through bridges that live in a private "switch" namespace.
//!
//! ```text
//!   h1 h2 h3 ──veth── [bra] ══ xa ─ xb ══ [brb] ──veth── h4 h5     (all inside <run>sw)
//! ```
//!
//! Cutting a host sets its veth down on the switch; a 3|2 partition sets the `xa`/`xb` link
//! between the two bridges down. Nothing is created in, routed through or changed in the
//! host's default namespace: links are created inside the switch namespace and moved straight
//! into the host namespaces.
//!
//! The test process itself stays in the default namespace. It reaches a node's loopback API
//! from a thread that has entered that node's namespace ([`in_ns`]): a network namespace is a
//! per-thread attribute, and every socket a thread opens belongs to its namespace.
//!
//! Names carry the test process's pid, a per-process counter and a tag, so concurrent runs and
//! tests never collide. [`Net`]'s `Drop` kills the processes and deletes every namespace it
//! made, also when a test panics; namespaces left by a killed test run (same prefix, dead pid)
//! are removed by [`sweep_stale`].

use crate::{run_cli, wait_until, Procs};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace this harness creates.
pub const NS_PREFIX: &str = "amesh";
/// Subnet of the test hosts (only ever inside the namespaces).
pub const SUBNET: &str = "10.77.0";
/// QUIC port every node listens on (each namespace has its own port space).
pub const QUIC_PORT: u16 = 4001;
/// Local API port of every node, on the namespace's loopback.
pub const API_PORT: u16 = 7600;
/// Demo agent port, on the namespace's loopback.
pub const AGENT_PORT: u16 = 8101;
/// Most hosts one [`Net`] builds.
pub const HOSTS_MAX: usize = 16;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args…` and fails with its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this machine lets us create network namespaces (root and iproute2). When it does
/// not, prints a loud banner saying which tests are skipped and why.
pub fn available(test: &str) -> bool {
    let probe = format!(
        "{NS_PREFIX}{}probe{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let why = match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            return true;
        }
        Err(_) if Command::new("ip").arg("-V").output().is_err() => {
            "`ip` (iproute2) is not installed".to_string()
        }
        Err(e) => format!("{e:#} (needs root / CAP_SYS_ADMIN)"),
    };
    crate::report_skip(test, &format!("network namespaces unavailable: {why}"));
    eprintln!(
        "\n#################################################################\n\
         ## SKIPPED {test}: network namespaces unavailable: {why}.\n\
         ## These failure tests did NOT run on this machine.\n\
         #################################################################\n"
    );
    false
}

/// Deletes namespaces with our prefix whose creating process is gone (left by a killed run).
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = PathBuf::from(format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        f()
    })
}

/// Runs the future made by `make` on a current-thread runtime inside namespace `ns`, without
/// blocking the caller's runtime.
pub async fn run_in_ns<T, F, Fut>(ns: &str, make: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let handle = in_ns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(make())
    });
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// One host: a namespace, an address, a node and its demo agent.
#[derive(Debug, Clone)]
pub struct Host {
    /// 1-based index.
    pub index: usize,
    /// Namespace name.
    pub ns: String,
    /// Its 10.x address.
    pub ip: String,
    /// The node's directory.
    pub dir: PathBuf,
    /// The node's id.
    pub id: String,
    /// QUIC multiaddr with `/p2p/<id>`.
    pub addr: String,
    /// The agent's name.
    pub agent: String,
    /// Index of the node process in [`Net::procs`].
    pub node_proc: usize,
}

impl Host {
    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

/// A set of hosts in namespaces; everything is torn down on drop.
pub struct Net {
    /// Node and agent processes (killed on drop, before the namespaces go).
    pub procs: Procs,
    /// Hosts, index 0 is `h1`.
    pub hosts: Vec<Host>,
    /// The switch namespace.
    pub sw: String,
    namespaces: Vec<String>,
    root_key: PathBuf,
    root_pub: String,
    mesh_id: String,
    dir: tempfile::TempDir,
}

impl Net {
    /// Builds the switch and `n` host namespaces (hosts `1..=split` on bridge `bra`, the rest
    /// on `brb`) and a mesh root. Starts no process.
    pub fn new(tag: &str, n: usize, split: usize) -> Result<Net> {
        if n > HOSTS_MAX || split > n {
            bail!("at most {HOSTS_MAX} hosts, split within them");
        }
        sweep_stale();
        let run = format!(
            "{NS_PREFIX}{}x{}{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("agentmesh-netns-")
            .tempdir()?;
        let root_dir = dir.path().join("root");
        let mesh_id = "netns-mesh".to_string();
        let root_pub = run_cli(&[
            "mesh",
            "init",
            "--dir",
            root_dir.to_str().context("utf-8")?,
            "--mesh-id",
            &mesh_id,
        ])?;
        let mut net = Net {
            procs: Procs::default(),
            hosts: vec![],
            sw: format!("{run}sw"),
            namespaces: vec![],
            root_key: root_dir.join("root.key"),
            root_pub,
            mesh_id,
            dir,
        };
        net.add_ns(&net.sw.clone())?;
        let sw = net.sw.clone();
        for br in ["bra", "brb"] {
            ip(&["-n", &sw, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", br, "up"])?;
        }
        ip(&[
            "-n", &sw, "link", "add", "xa", "type", "veth", "peer", "name", "xb",
        ])?;
        ip(&["-n", &sw, "link", "set", "xa", "master", "bra", "up"])?;
        ip(&["-n", &sw, "link", "set", "xb", "master", "brb", "up"])?;
        for i in 1..=n {
            let ns = format!("{run}h{i}");
            net.add_ns(&ns)?;
            let veth = format!("vh{i}");
            let addr = format!("{SUBNET}.{}", 10 + i);
            ip(&[
                "-n", &sw, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            let br = if i <= split { "bra" } else { "brb" };
            ip(&["-n", &sw, "link", "set", &veth, "master", br, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            net.hosts.push(Host {
                index: i,
                ns,
                ip: addr,
                dir: net.dir.path().join(format!("h{i}")),
                id: String::new(),
                addr: String::new(),
                agent: format!("agent-h{i}"),
                node_proc: usize::MAX,
            });
        }
        Ok(net)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        Ok(())
    }

    /// Host `i` (1-based).
    pub fn h(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// Creates host `i`'s key and certificate, starts its demo agent and its node (seeded by
    /// `seeds`, host indices), and waits until the node serves its API.
    pub async fn start(&mut self, i: usize, caps: &[&str], seeds: &[usize]) -> Result<()> {
        let dir = self.h(i).dir.clone();
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("node.key");
        let id = run_cli(&["keygen", "--out", key.to_str().context("utf-8")?])?;
        run_cli(&[
            "admit",
            "--root",
            self.root_key.to_str().context("utf-8")?,
            "--node-pub",
            &id,
            "--roles",
            "agent",
            "--ttl",
            "1d",
            "--out",
            dir.join("node.cert").to_str().context("utf-8")?,
        ])?;
        let host_ip = self.h(i).ip.clone();
        let addr = format!("/ip4/{host_ip}/udp/{QUIC_PORT}/quic-v1/p2p/{id}");
        {
            let h = &mut self.hosts[i - 1];
            h.id = id;
            h.addr = addr;
        }
        let seed_addrs: Vec<String> = seeds
            .iter()
            .filter(|&&s| s != i)
            .map(|&s| format!("\"{}\"", self.h(s).addr))
            .collect();
        let agent = self.h(i).agent.clone();
        let mut toml = format!(
            "[node]\nkey_file = \"node.key\"\ncert_file = \"node.cert\"\nstate_dir = \"state\"\n\
             listen = [\"/ip4/{host_ip}/udp/{QUIC_PORT}/quic-v1\"]\n\
             api_listen = \"127.0.0.1:{API_PORT}\"\nseeds = [{}]\ndrain_timeout_ms = 2000\n\n\
             [mesh]\nadmission = \"enforced\"\nroot_pub = \"{}\"\nmesh_id = \"{}\"\n\n\
             [agent]\nname = \"{agent}\"\nhandler = \"http://127.0.0.1:{AGENT_PORT}\"\n",
            seed_addrs.join(", "),
            self.root_pub,
            self.mesh_id
        );
        for c in caps {
            toml.push_str(&format!("\n[[agent.capabilities]]\nname = \"{c}\"\n"));
        }
        std::fs::write(dir.join("node.toml"), toml)?;
        let ns = self.h(i).ns.clone();
        let alog = std::fs::File::create(dir.join("agent.log"))?;
        let agent_child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(crate::agentmesh_bin())
            .args(["demo-agent", "--listen"])
            .arg(format!("127.0.0.1:{AGENT_PORT}"))
            .args([
                "--name",
                &agent,
                "--latency-ms-p50",
                "2",
                "--latency-ms-p99",
                "5",
            ])
            .stdin(Stdio::null())
            .stdout(alog.try_clone()?)
            .stderr(alog)
            .spawn()?;
        self.procs.push(&format!("agent-h{i}"), agent_child);
        self.spawn_node(i).await
    }

    /// Starts host `i`'s node (again) from its existing key, certificate and config, and
    /// waits for its API. Used to bring a node back after [`Net::kill9`].
    pub async fn spawn_node(&mut self, i: usize) -> Result<()> {
        let dir = self.h(i).dir.clone();
        let ns = self.h(i).ns.clone();
        let state = dir.join("state").join("node.json");
        let _ = std::fs::remove_file(&state);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(crate::agentmesh_bin())
            .args(["node", "--config"])
            .arg(dir.join("node.toml"))
            .env("RUST_LOG", "info,agentmesh_node=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.hosts[i - 1].node_proc = self.procs.push(&format!("node-h{i}"), child);
        wait_until(
            &format!("h{i} node state file"),
            crate::NODE_START_TIMEOUT,
            || {
                let p = state.clone();
                async move { Ok(p.exists().then_some(())) }
            },
        )
        .await
        .with_context(|| format!("h{i} log:\n{}", self.h(i).log()))?;
        Ok(())
    }

    /// `GET http://127.0.0.1:7600{path}` inside host `i`'s namespace: `(status, json)`.
    pub async fn get(&self, i: usize, path: &str) -> Result<(u16, serde_json::Value)> {
        let url = format!("http://127.0.0.1:{API_PORT}{path}");
        run_in_ns(&self.h(i).ns, move || async move {
            let r = reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            let s = r.status().as_u16();
            Ok((s, r.json().await.unwrap_or(serde_json::Value::Null)))
        })
        .await
    }

    /// `PUT /v1/agent` inside host `i`'s namespace.
    pub async fn put_agent(&self, i: usize, body: serde_json::Value) -> Result<u16> {
        let url = format!("http://127.0.0.1:{API_PORT}/v1/agent");
        run_in_ns(&self.h(i).ns, move || async move {
            let r = reqwest::Client::new()
                .put(url)
                .json(&body)
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            Ok(r.status().as_u16())
        })
        .await
    }

    /// How host `observer` sees every member: `node_id -> (state, capabilities)`.
    pub async fn view(
        &self,
        observer: usize,
    ) -> Result<std::collections::BTreeMap<String, (String, Vec<String>)>> {
        let (status, v) = self.get(observer, "/v1/members").await?;
        if status != 200 {
            bail!("h{observer} /v1/members: {status} {v}");
        }
        let mut out = std::collections::BTreeMap::new();
        for m in v["members"].as_array().context("members")? {
            let caps = m["capabilities"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            out.insert(
                m["node_id"].as_str().unwrap_or("").to_string(),
                (m["state"].as_str().unwrap_or("").to_string(), caps),
            );
        }
        Ok(out)
    }

    /// The state `observer` holds for `subject` ("" if unknown).
    pub async fn state_of(&self, observer: usize, subject: usize) -> Result<String> {
        let id = self.h(subject).id.clone();
        Ok(self
            .view(observer)
            .await?
            .remove(&id)
            .map(|(s, _)| s)
            .unwrap_or_default())
    }

    /// Waits until each of `observers` sees each of `subjects` in `state`; returns how long.
    pub async fn wait_states(
        &self,
        what: &str,
        observers: &[usize],
        subjects: &[usize],
        state: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        wait_until(what, timeout, || async {
            let mut seen = vec![];
            for &o in observers {
                for &s in subjects {
                    if o == s {
                        continue;
                    }
                    let st = self.state_of(o, s).await.unwrap_or_else(|e| e.to_string());
                    if st != state {
                        seen.push(format!("h{o} sees h{s} {st:?}"));
                    }
                }
            }
            if seen.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("{}", seen.join("; "))
            }
        })
        .await?;
        Ok(start.elapsed())
    }

    /// Cuts host `i` off the network (its switch port goes down).
    pub fn cut(&self, i: usize) -> Result<()> {
        ip(&["-n", &self.sw, "link", "set", &format!("vh{i}"), "down"])
    }

    /// Reconnects host `i`.
    pub fn heal(&self, i: usize) -> Result<()> {
        ip(&["-n", &self.sw, "link", "set", &format!("vh{i}"), "up"])
    }

    /// Splits `bra` from `brb` (the hosts before `split` from those after).
    pub fn partition(&self) -> Result<()> {
        ip(&["-n", &self.sw, "link", "set", "xa", "down"])
    }

    /// Joins the two bridges again.
    pub fn heal_partition(&self) -> Result<()> {
        ip(&["-n", &self.sw, "link", "set", "xa", "up"])
    }

    /// SIGKILLs host `i`'s node.
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        let p = self.hosts[i - 1].node_proc;
        self.procs.kill9(p)
    }

    /// The last `lines` lines of every host's node log, for a failure message.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let log = h.log();
            let all: Vec<&str> = log.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!("---- h{} ({}) ----\n", h.index, h.id));
            out.push_str(&all[from..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// The directory everything lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Processes first: a namespace with live processes in it only disappears when they do.
        self.procs = Procs::default();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

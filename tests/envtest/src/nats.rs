//! A real NATS JetStream cluster on 127.0.0.1 for the JetStream tests: `nats-server`
//! processes built from their Go module by `scripts/build-nats.sh`, each with its own ports
//! (client, cluster routes, monitoring) and store dir, routed to each other.
//!
//! Nodes can be SIGKILLed, SIGSTOPped (a stall: the process keeps its sockets but answers
//! nothing) and restarted on the same ports and store dir. The children die with the test
//! process (`PR_SET_PDEATHSIG`, see [`crate::spawn_owned`]); dropping the cluster kills them
//! and removes the run directory, unless the thread is panicking (the logs stay for reading).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{cleanup_stale_runs, repo_root, spawn_owned, tail, unix_millis};

/// The script that builds nats-server, relative to the repository root.
pub const BUILD_SCRIPT: &str = "scripts/build-nats.sh";

/// How long a cluster (or a restarted node) may take to have a JetStream meta leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The nats-server built by [`BUILD_SCRIPT`] (`VC_NATS_SERVER` overrides). Builds nothing: a
/// test run without it fails with what to run.
pub fn nats_server_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("VC_NATS_SERVER") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("VC_NATS_SERVER={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let script = repo_root()?.join(BUILD_SCRIPT);
    let out = Command::new("bash")
        .arg(&script)
        .arg("--cached")
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {} --cached", script.display()))?;
    let bin = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()));
    match bin {
        Some(bin) if out.status.success() && bin.is_file() => Ok(bin),
        _ => bail!(
            "nats-server is not built: run `{BUILD_SCRIPT}` (or `make peers`, which `make test` \
             runs) to build it from its Go module into ~/.cache/vehicle-connect/nats"
        ),
    }
}

/// One nats-server of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

/// n nats-server processes with JetStream, routed to each other as one cluster.
#[derive(Debug)]
pub struct NatsCluster {
    /// Run directory: config files, store dirs, logs.
    pub dir: PathBuf,
    bin: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// A cluster of `n` nodes (n ≥ 1) with a JetStream meta leader; fails with the servers'
    /// logs if the binary is missing or the cluster does not form.
    pub async fn start(n: usize) -> Result<NatsCluster> {
        if n == 0 {
            bail!("a NATS cluster needs at least one node");
        }
        let bin = nats_server_bin()?;
        let dir = run_dir()?;
        let ports = free_ports(3 * n)?;
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: ports[3 * i],
                cluster_port: ports[3 * i + 1],
                monitor_port: ports[3 * i + 2],
                conf: dir.join(format!("n{i}.conf")),
                log: dir.join(format!("n{i}.log")),
                child: None,
                stopped: false,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|node| format!("nats-route://127.0.0.1:{}", node.cluster_port))
            .collect();
        for node in &nodes {
            let store = dir.join(format!("{}-store", node.name));
            fs::create_dir_all(&store)?;
            fs::write(&node.conf, config(node, &store, n, &routes))?;
        }
        let mut cluster = NatsCluster { dir, bin, nodes };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(None).await?;
        Ok(cluster)
    }

    /// One node with JetStream (no cluster): streams there take one replica.
    pub async fn single() -> Result<NatsCluster> {
        Self::start(1).await
    }

    /// The client URLs of every node, comma-separated (`nats://127.0.0.1:p1,nats://…`).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The pid of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of node `i`'s log (every start of it appends there).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.nodes[i].log, lines)
    }

    /// SIGKILL node `i` and reap it (no clean shutdown, no leadership handed over).
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.stopped = false;
    }

    /// SIGSTOP node `i`: it keeps its sockets open but answers nothing, like a stalled host.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.nodes[i].stopped = true;
        Ok(())
    }

    /// SIGCONT node `i` after [`NatsCluster::stop`].
    pub fn cont(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.nodes[i].stopped = false;
        Ok(())
    }

    /// Start node `i` again (after [`NatsCluster::kill`], or kill it first) on the same ports
    /// and store dir, and wait until it is back in the cluster with JetStream current.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(Some(i)).await
    }

    fn signal(&self, i: usize, sig: libc::c_int) -> Result<()> {
        let pid = self
            .pid(i)
            .ok_or_else(|| anyhow!("nats node {i} is not running"))?;
        // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            bail!(
                "signal {sig} to nats node {i} (pid {pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = spawn_owned(cmd)
            .with_context(|| format!("starting {} for node {}", self.bin.display(), node.name))?;
        node.child = Some(child);
        node.stopped = false;
        Ok(())
    }

    /// Waits until every running node (or only `only`) answers `/healthz` (JetStream
    /// included) and, in a cluster, reports a meta leader.
    async fn wait_ready(&mut self, only: Option<usize>) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let wanted: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.nodes.len()).collect(),
        };
        let mut last = String::from("no answer yet");
        loop {
            let mut all = true;
            for &i in &wanted {
                if let Some(status) = self.nodes[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    bail!(
                        "nats node {i} exited ({status}) while starting; log {}:\n{}",
                        self.nodes[i].log.display(),
                        self.log_tail(i, 40)
                    );
                }
                match self.node_ready(i).await {
                    Ok(()) => {}
                    Err(e) => {
                        last = format!("node {i}: {e:#}");
                        all = false;
                        break;
                    }
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = wanted
                    .iter()
                    .map(|&i| {
                        format!(
                            "--- {} ---\n{}",
                            self.nodes[i].log.display(),
                            self.log_tail(i, 30)
                        )
                    })
                    .collect();
                bail!(
                    "NATS cluster not ready after {READY_TIMEOUT:?} ({last}); logs:\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn node_ready(&self, i: usize) -> Result<()> {
        let port = self.nodes[i].monitor_port;
        let (status, body) = http_get(port, "/healthz").await?;
        if status != 200 {
            bail!("/healthz {status}: {}", body.trim());
        }
        if self.nodes.len() > 1 {
            let (_, jsz) = http_get(port, "/jsz").await?;
            let jsz: serde_json::Value = serde_json::from_str(&jsz).context("parsing /jsz")?;
            let leader = jsz
                .pointer("/meta_cluster/leader")
                .and_then(|l| l.as_str())
                .unwrap_or_default();
            if leader.is_empty() {
                bail!("no JetStream meta leader yet");
            }
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("vc-envtest: NATS logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh run directory under the envtest root (`VC_ENVTEST_DIR`, else
/// `<repo>/target/envtest`), named `<pid>-…` so that a later run removes it once this
/// process is gone.
fn run_dir() -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let root = match std::env::var_os("VC_ENVTEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root()?.join("target/envtest"),
    };
    cleanup_stale_runs(&root);
    let dir = root.join(format!(
        "{}-{}-nats{}",
        std::process::id(),
        unix_millis(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.canonicalize()?)
}

fn config(node: &Node, store: &Path, n: usize, routes: &[String]) -> String {
    // Small limits: tests write little, and the machine is shared.
    let mut conf = format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{monitor}\n\
         jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n",
        name = node.name,
        client = node.client_port,
        monitor = node.monitor_port,
        store = store.display(),
    );
    if n > 1 {
        conf.push_str(&format!(
            "cluster {{\n  name: vc-test\n  listen: 127.0.0.1:{}\n  routes: [\n{}\n  ]\n}}\n",
            node.cluster_port,
            routes
                .iter()
                .map(|r| format!("    {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    conf
}

/// `count` distinct free ports on 127.0.0.1 (all listeners held at once so they differ).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A plain HTTP/1.0 GET on the monitoring port: status and body.
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| anyhow!("GET {path} on port {port} timed out"))??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: no HTTP status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

//! A private NATS cluster: `n` `nats-server -js` processes on 127.0.0.1, routed to each
//! other, each with its own temp dir (store, log). Tests may SIGKILL and restart single
//! nodes freely; everything is killed on drop. Never the shared server on 4222.

use crate::nats::harness_options;
use crate::nats_server::nats_server_bin;
use crate::secure::Security;
use crate::util::spawn_service;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{file_tail, free_port, kill_and_reap, log_marker, tcp_accepts, TempDir};

/// How long a cluster start or a node restart may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Name of the throw-away R3 stream created and deleted to prove the cluster works.
const PROBE_STREAM: &str = "IT_CLUSTER_PROBE";

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
    // Declared last: removed after the process is dead.
    dir: TempDir,
}

impl Node {
    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// `Some(reason)` when the process has exited.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("{} exited with {status}", self.name))
            }
            _ => None,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private NATS cluster with JetStream (servers `n1`..`nN`, cluster name `it-cluster`).
///
/// Ports (client and route) are fixed for the cluster's lifetime, so a restarted node comes
/// back where clients and its peers expect it, with the same store directory.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    /// TLS and authorization on the client ports (`-c <config>`); routes stay plaintext on
    /// loopback.
    security: Option<Arc<Security>>,
}

/// A raw JetStream API request on `client` (a `Null` body sends an empty payload).
/// `Err` for a timeout, a transport error, a reply that is not JSON or one carrying an
/// `error`. Raw requests rather than the typed async-nats API: async-nats 0.42 cannot
/// parse some answers of nats-server 2.9.x.
pub async fn js_api(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
) -> Result<Value, String> {
    let payload = if body.is_null() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::from(serde_json::to_vec(body).expect("serialize request"))
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_string(), payload),
    )
    .await
    .map_err(|_| format!("{subject}: timed out"))?
    .map_err(|e| format!("{subject}: {e}"))?;
    let value: Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("{subject}: reply is not JSON: {e}"))?;
    if let Some(err) = value.get("error") {
        return Err(format!("{subject}: {err}"));
    }
    Ok(value)
}

async fn connect_to(url: &str, security: Option<&Security>) -> Result<async_nats::Client, String> {
    harness_options(security)
        .await
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

impl NatsCluster {
    /// Starts `n` nodes routed to each other and waits until every node accepts clients,
    /// JetStream answers through each of them and an R`n` stream can be created and
    /// deleted (so the meta group has a leader and every peer takes part).
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, None).await
    }

    /// Like [`NatsCluster::start`], every node with the TLS and authorization of `security`.
    pub async fn start_secured(n: usize, security: Arc<Security>) -> NatsCluster {
        NatsCluster::start_with(n, Some(security)).await
    }

    async fn start_with(n: usize, security: Option<Arc<Security>>) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let mut cluster = NatsCluster {
            nodes: Vec::with_capacity(n),
            bin: nats_server_bin(),
            security,
        };
        for i in 0..n {
            cluster.nodes.push(Node {
                name: format!("n{}", i + 1),
                port: free_port(),
                cluster_port: free_port(),
                child: None,
                dir: TempDir::new(&format!("natsc{}", i + 1)),
            });
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..n {
            if let Err(msg) = cluster.wait_node(i, deadline).await {
                panic!(
                    "NATS cluster did not start: {msg}\n{}",
                    cluster.all_log_tails()
                );
            }
        }
        if let Err(msg) = cluster.wait_replicated_stream(deadline).await {
            panic!(
                "NATS cluster did not form: {msg}\n{}",
                cluster.all_log_tails()
            );
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &mut self.nodes[i];
        let mut cmd = Command::new(&self.bin);
        if let Some(sec) = &self.security {
            cmd.arg("-c").arg(sec.config_path());
        }
        cmd.arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(node.port.to_string())
            .arg("-n")
            .arg(&node.name)
            .arg("-js")
            .arg("-sd")
            .arg(node.store_dir())
            .arg("--cluster_name")
            .arg("it-cluster")
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port));
        if !routes.is_empty() {
            cmd.arg("--routes").arg(routes.join(","));
        }
        cmd.current_dir(node.dir.path());
        let child = spawn_service(&mut cmd, &node.log_path());
        node.child = Some(child);
    }

    /// Waits until node `i` accepts TCP and `$JS.API.INFO` answers without error through it
    /// (which needs its routes and a meta leader).
    async fn wait_node(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let mut last_err;
        let (scheme, security) = (self.scheme(), self.security.clone());
        loop {
            let node = &mut self.nodes[i];
            if let Some(reason) = node.exited() {
                return Err(reason);
            }
            if node.child.is_none() {
                return Err(format!("{} is not running", node.name));
            }
            let url = node.url(scheme);
            if tcp_accepts(node.port).await {
                match connect_to(&url, security.as_deref()).await {
                    Ok(client) => match js_api(&client, "$JS.API.INFO", &Value::Null).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last_err = e,
                    },
                    Err(e) => last_err = e,
                }
            } else {
                last_err = format!("{url} does not accept TCP yet");
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready (last error: {last_err})",
                    self.nodes[i].name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates and deletes an R`n` memory stream until that works.
    async fn wait_replicated_stream(&self, deadline: Instant) -> Result<(), String> {
        let replicas = self.nodes.len();
        let config = serde_json::json!({
            "name": PROBE_STREAM,
            "subjects": ["it.cluster.probe"],
            "storage": "memory",
            "num_replicas": replicas,
        });
        let mut last_err;
        loop {
            let attempt = async {
                let client = self.connect().await?;
                js_api(
                    &client,
                    &format!("$JS.API.STREAM.CREATE.{PROBE_STREAM}"),
                    &config,
                )
                .await?;
                js_api(
                    &client,
                    &format!("$JS.API.STREAM.DELETE.{PROBE_STREAM}"),
                    &Value::Null,
                )
                .await?;
                Ok::<(), String>(())
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no R{replicas} stream could be created (last error: {last_err})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (a cluster has at least one node).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `nats://127.0.0.1:<p1>,nats://127.0.0.1:<p2>,...` (every node, in order).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url(self.scheme()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:<port>` of node `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url(self.scheme())
    }

    /// `tls` when the client ports speak TLS, else `nats`.
    fn scheme(&self) -> &'static str {
        self.security.as_ref().map_or("nats", |s| s.scheme())
    }

    /// The cluster's security, when it is secured.
    pub fn security(&self) -> Option<&Security> {
        self.security.as_deref()
    }

    /// The client port of node `i` (stable across restarts).
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The index of the node whose client port is `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Server name of node `i` (`n1` for `i == 0`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with server name `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The pid of node `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// The JetStream store directory (`-sd`) of node `i`.
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].store_dir()
    }

    /// A new client connection to the first node that accepts one (running nodes only).
    pub async fn connect(&self) -> Result<async_nats::Client, String> {
        let mut errors = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            match connect_to(&node.url(self.scheme()), self.security.as_deref()).await {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "no node accepts a connection: {}",
            errors.join("; ")
        ))
    }

    /// A raw JetStream API request through any running node (see [`js_api`]).
    pub async fn js_request(&self, subject: &str, body: &Value) -> Result<Value, String> {
        let client = self.connect().await?;
        js_api(&client, subject, body).await
    }

    /// The server name of the current leader of `stream` (`$JS.API.STREAM.INFO.<stream>`
    /// `cluster.leader`), or why it is not known.
    pub async fn stream_leader(&self, stream: &str) -> Result<String, String> {
        let info = self
            .js_request(&format!("$JS.API.STREAM.INFO.{stream}"), &Value::Null)
            .await?;
        info["cluster"]["leader"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("stream {stream} has no leader: {}", info["cluster"]))
    }

    /// The server name of the current leader of consumer `consumer` on `stream`.
    pub async fn consumer_leader(&self, stream: &str, consumer: &str) -> Result<String, String> {
        let info = self
            .js_request(
                &format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                &Value::Null,
            )
            .await?;
        info["cluster"]["leader"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("consumer {consumer} has no leader: {}", info["cluster"]))
    }

    /// SIGKILLs node `i` and reaps it. No-op when it is not running.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on the same ports with the same store directory (killing it
    /// first if it runs) and waits until JetStream answers through it.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        log_marker(&self.nodes[i].log_path(), "restart");
        self.spawn(i);
        let deadline = Instant::now() + START_TIMEOUT;
        if let Err(msg) = self.wait_node(i, deadline).await {
            self.kill(i);
            panic!("NATS node did not restart: {msg}\n{}", self.log_tail(i));
        }
    }

    /// The log file of node `i` (stdout + stderr, restarts appended).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].log_path()
    }

    /// The last lines of node `i`'s log, for panic messages.
    pub fn log_tail(&self, i: usize) -> String {
        file_tail(&self.nodes[i].log_path(), 40)
    }

    /// The log tails of every node.
    pub fn all_log_tails(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.log_tail(i))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // Every process first, then (with the nodes) the directories.
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

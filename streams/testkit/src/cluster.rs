//! [`NatsCluster`]: a JetStream cluster of real `nats-server` processes on this machine, one
//! per node on free loopback ports, each with its own temporary store, for tests of R3
//! streams and of what happens when a node dies (the failover run in `deploy/tests/e2e`).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long a node gets to start, and a restarted node to catch up with the others.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One node's fixed addresses: the same across restarts, so the others' routes and the
/// clients' server lists stay valid.
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    child: Option<Child>,
}

/// A running JetStream cluster owned by one test: `nodes` nats-servers routed to each other,
/// every node fsyncing each write (`sync_interval: always`) unless started with
/// [`NatsCluster::start_without_fsync`]. Every node is killed, and every store removed, on
/// drop.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    sync_always: bool,
}

impl NatsCluster {
    /// Starts a cluster of `nodes` nodes (3 for R3 streams) and waits until each is healthy
    /// (a JetStream meta leader is elected).
    pub fn start(nodes: usize) -> Self {
        Self::start_with_sync(nodes, true)
    }

    /// As [`NatsCluster::start`], every node on nats-server's default fsync (every two
    /// minutes): an acknowledgement then means "in the memory of a majority", not on a disk.
    /// Only for measuring what fsync costs.
    pub fn start_without_fsync(nodes: usize) -> Self {
        Self::start_with_sync(nodes, false)
    }

    fn start_with_sync(nodes: usize, sync_always: bool) -> Self {
        assert!(nodes >= 1, "a cluster has at least one node");
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        // Ports are chosen before any node starts: every node's routes name the others'.
        let ports = free_ports(3 * nodes);
        let nodes = (0..nodes)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                client_port: ports[3 * i],
                cluster_port: ports[3 * i + 1],
                monitor_port: ports[3 * i + 2],
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster {
            dir,
            nodes,
            sync_always,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never: [`NatsCluster::start`] needs one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma separated: what `REG_NATS_URL` takes.
    pub fn url(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s own client URL.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Node `i`'s server name, as JetStream reports leaders and peers (`n1`, `n2`, ...).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node whose server name is `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `i` runs (it was not killed, or was restarted since).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Node `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Node `i`'s store directory.
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[i].name).join("jetstream")
    }

    /// Node `i`'s log so far, for assertion messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// SIGKILLs node `i` (nothing is flushed that was not already written).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (after [`NatsCluster::kill`], or killing it first) with its
    /// ports and store, and waits until it is healthy: back in the cluster and caught up
    /// with the streams it replicates.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Starts node `i` again (killing it first) without waiting for it: a benchmark times how
    /// long it takes to be [`NatsCluster::is_healthy`].
    pub fn start_again(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Whether node `i` answers `/healthz`: back in the cluster and caught up with the streams
    /// it replicates.
    pub fn is_healthy(&self, i: usize) -> bool {
        healthz(self.nodes[i].monitor_port)
    }

    /// Connects a client to node `i` alone: it does not move to another node when this one
    /// dies (for asking one node what it knows).
    pub async fn connect_node(&self, i: usize) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .connect(self.node_url(i))
            .await
            .expect("the test nats-server node accepts connections")
    }

    /// Connects a client to the cluster (any node; it reconnects to another when one dies).
    pub async fn connect(&self) -> async_nats::Client {
        let servers = streams::runtime::server_addrs(&self.url()).expect("the nodes' URLs");
        async_nats::connect(servers)
            .await
            .expect("the test cluster accepts connections")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let node_dir = self.dir.path().join(&node.name);
        let store = node_dir.join("jetstream");
        std::fs::create_dir_all(&store).expect("store directory");
        let routes = self
            .nodes
            .iter()
            .filter(|other| other.name != node.name)
            .map(|other| format!("nats-route://127.0.0.1:{}", other.cluster_port))
            .collect::<Vec<_>>()
            .join(", ");
        let config = node_dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nhost: 127.0.0.1\nport: {port}\n\
                 http: 127.0.0.1:{monitor}\nmax_payload: 8MB\n\
                 jetstream {{\n  store_dir: {store:?}\n{sync}}}\n\
                 cluster {{\n  name: test-cluster\n  host: 127.0.0.1\n  port: {cluster}\n  \
                 routes: [{routes}]\n}}\n",
                name = node.name,
                port = node.client_port,
                monitor = node.monitor_port,
                cluster = node.cluster_port,
                sync = if self.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            ),
        )
        .expect("config file");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log file");
        let child = crate::spawn_nats_server(&config, log, None);
        self.nodes[i].child = Some(child);
    }

    /// Polls node `i`'s `/healthz` (200 once JetStream has a meta leader and this node's
    /// streams and consumers are current) until it answers 200.
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if healthz(self.nodes[i].monitor_port) {
                return;
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "nats-server {} exited while starting ({status}); log:\n{}",
                    self.nodes[i].name,
                    self.log(i)
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not become healthy within {READY_TIMEOUT:?}; log:\n{}",
                self.nodes[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// `count` distinct free loopback ports. Each is bound to find it and released at once, so
/// another process could take one before the node does: unlikely, and the node's start then
/// fails loudly.
pub(crate) fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// One `GET /healthz` on the monitoring port, over plain HTTP/1.0.
fn healthz(port: u16) -> bool {
    get_ok(port, "/healthz")
}

/// Whether one `GET path` on a loopback port, over plain HTTP/1.0, answers 200.
pub(crate) fn get_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .lines()
        .next()
        .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"))
}

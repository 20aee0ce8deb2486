//! A Redis Cluster of `redis-server` processes on loopback for tests, built with
//! `redis-cli --cluster create` (3 masters, no replicas), killed when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::server::RedisServer;

/// The cluster's nodes (each killed on drop) and their work directory.
pub struct RedisCluster {
    _nodes: Vec<RedisServer>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Spawns `masters` nodes and joins them into one cluster covering every slot.
    pub fn spawn(masters: usize) -> Result<RedisCluster, String> {
        let dir =
            std::env::temp_dir().join(format!("lh-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cluster dir: {e}"))?;
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..masters {
            let port = RedisServer::free_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let node = RedisServer::spawn_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().ok_or("temp dir is not UTF-8")?,
                    "--cluster-node-timeout",
                    "5000",
                    "--appendonly",
                    "no",
                    "--dir",
                    dir.to_str().ok_or("temp dir is not UTF-8")?,
                ],
            )?;
            nodes.push(node);
            ports.push(port);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .map_err(|e| format!("redis-cli: {e}"))?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("node {port} never reached cluster_state:ok"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(RedisCluster {
            _nodes: nodes,
            ports,
            dir,
        })
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes' ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! `deploy/local/start.sh` and `stop.sh`: etcd plus every component as separate processes on
//! one host, driven exactly as an operator would run the scripts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{eventually, serving_primaries, short_temp_dir, walking_skeleton, write_and_read};

const SHARDS: u16 = 2;
const ZONES: u16 = 2;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local")
        .join(name)
}

/// The scripts' settings for this test: free ports, a temp run dir, fast unsafe PostgreSQL.
struct Settings {
    run_dir: PathBuf,
    gate_port: u16,
    base_port: u16,
    /// The topology URL start.sh uses.
    topo: String,
    env: Vec<(String, String)>,
}

impl Settings {
    fn new(run_dir: &Path) -> Settings {
        let base_port = support::free_base_port(SHARDS * ZONES);
        // etcd needs two consecutive ports (client, peer); take them from a free base range.
        let etcd_port = support::free_base_port(2);
        let ports = support::free_ports(2);
        let env = [
            ("TESSERA_BIN", support::TESSERA.to_string()),
            ("RUN_DIR", run_dir.display().to_string()),
            ("SHARDS", SHARDS.to_string()),
            ("ZONES", ZONES.to_string()),
            ("GATE_PORT", ports[0].to_string()),
            ("METRICS_PORT", ports[1].to_string()),
            ("ETCD_PORT", etcd_port.to_string()),
            ("BASE_PORT", base_port.to_string()),
            ("UNSAFE_FAST", "1".to_string()),
        ];
        Settings {
            run_dir: run_dir.to_path_buf(),
            gate_port: ports[0],
            base_port,
            topo: format!("etcd://127.0.0.1:{etcd_port}/tessera"),
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// Runs a script to completion; returns its stdout, panicking with both streams on failure.
    fn run(&self, name: &str) -> String {
        let mut command = Command::new("bash");
        command
            .arg(script(name))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for (key, _) in std::env::vars() {
            if key.starts_with("TESSERA_") && key != "TESSERA_BIN" && key != "TESSERA_ETCD_BIN" {
                command.env_remove(key);
            }
        }
        let output = command.output().expect("run the script");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{name} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn pid(&self, component: &str) -> i32 {
        let path = self.run_dir.join("pids").join(format!("{component}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    }
}

/// Runs stop.sh when the test ends, also when it fails: the scripts' processes are not
/// children of the test and would outlive it.
struct StopOnDrop<'a>(&'a Settings);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("stop.sh"))
            .envs(self.0.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn local_scripts_start_a_multi_process_cluster_that_serves_sql_and_stop_it() {
    // Goal: start.sh brings up etcd, 2 shards x 2 zones of tablets, a coordinator per zone and a
    // gate as separate processes that serve the walking-skeleton SQL (replicas receive the
    // rows); re-running start.sh restarts exactly the component that died; stop.sh stops
    // every process, PostgreSQL included.
    let dir = short_temp_dir();
    let settings = Settings::new(&dir.path().join("run"));
    let _stop = StopOnDrop(&settings);
    let started = settings.run("start.sh");
    assert!(
        started.contains(&format!(
            "ready: postgres://postgres:postgres@127.0.0.1:{}/app",
            settings.gate_port
        )),
        "{started}"
    );

    // Which tablet is primary is the cluster's decision; `tessera status` reports it. Tablet i
    // has PostgreSQL on BASE_PORT + i, in shard-major order, so the other tablets of a shard
    // are its replicas.
    let primaries = serving_primaries(&["--topo", &settings.topo]).await;
    assert_eq!(primaries.len(), usize::from(SHARDS));
    walking_skeleton(settings.gate_port, &primaries, "orders")
        .await
        .expect("walking skeleton");
    for (shard, primary) in primaries.iter().enumerate() {
        let expected: i64 = support::connect(primary.postgres_port)
            .await
            .expect("primary")
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count")
            .get(0);
        let ports = (0..ZONES).map(|zone| settings.base_port + shard as u16 * ZONES + zone);
        for replica_port in ports.filter(|port| *port != primary.postgres_port) {
            eventually(
                "a replica has the primary's rows",
                Duration::from_secs(30),
                || async move {
                    let replica = support::connect(replica_port).await?;
                    let count: i64 = replica
                        .query_one("SELECT count(*) FROM orders", &[])
                        .await?
                        .get(0);
                    anyhow::ensure!(
                        count == expected,
                        "replica has {count} rows, primary {expected}"
                    );
                    Ok(())
                },
            )
            .await;
        }
    }

    // A crashed tablet is restarted by running start.sh again; nothing else restarts.
    let gate_pid = settings.pid("gate");
    let tablet_pid = settings.pid("tablet-zone1-101");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tablet_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the tablet");
    eventually(
        "the killed tablet is gone",
        Duration::from_secs(10),
        || async move {
            anyhow::ensure!(!is_running(tablet_pid), "still running");
            Ok(())
        },
    )
    .await;
    let restarted = settings.run("start.sh");
    assert!(
        restarted.contains("tablet-zone1-101: started"),
        "{restarted}"
    );
    assert!(restarted.contains("gate: already running"), "{restarted}");
    assert_eq!(settings.pid("gate"), gate_pid);
    eventually(
        "writes to the restarted tablet",
        Duration::from_secs(30),
        || write_and_read(settings.gate_port, "orders", 7),
    )
    .await;

    let pids: Vec<i32> = std::fs::read_dir(settings.run_dir.join("pids"))
        .expect("pid dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            std::fs::read_to_string(path)
                .expect("pid")
                .trim()
                .parse()
                .expect("pid")
        })
        .collect();
    assert_eq!(
        pids.len(),
        usize::from(SHARDS * ZONES + ZONES + 2),
        "etcd, tablets, coordinators, gate"
    );
    let stopped = settings.run("stop.sh");
    assert!(
        !stopped.contains("killing"),
        "a component ignored SIGTERM:\n{stopped}"
    );
    for pid in pids {
        assert!(!is_running(pid), "pid {pid} survived stop.sh");
    }
    for tablet in 0..SHARDS * ZONES {
        let port = settings.base_port + tablet;
        assert!(
            support::connect(port).await.is_err(),
            "PostgreSQL on {port} survived stop.sh"
        );
    }
}

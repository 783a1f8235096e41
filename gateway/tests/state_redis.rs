//! The Redis state store against the machine's real Redis (127.0.0.1:6379), and outages
//! against a private `redis-server` this test starts and stops.
//!
//! Every test uses its own key prefix and deletes its keys at the end.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::state::{OnUnavailable, RedisUrls, StateBackend, StateConfig};
use gateway::config::HumanDuration;
use gateway::state::{
    Answer, Hold, HoldState, Op, Settlement, SharedStore, StateError, StateStore,
};

const REDIS: &str = "redis://127.0.0.1:6379";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn prefix(test: &str) -> String {
    format!("gwtest-{test}-{}", std::process::id())
}

fn config(url: &str, prefix: &str, on_unavailable: OnUnavailable) -> StateConfig {
    StateConfig {
        backend: StateBackend::Redis,
        url: Some(RedisUrls::One(url.into())),
        timeout: HumanDuration(Duration::from_millis(200)),
        on_unavailable,
        key_prefix: prefix.into(),
    }
}

fn store(
    rt: &tokio::runtime::Runtime,
    cfg: &StateConfig,
) -> (Arc<dyn StateStore>, prometheus::IntCounter) {
    let incidents = prometheus::IntCounter::new("incidents", "incidents").unwrap();
    let s = SharedStore::from_config(cfg, incidents.clone(), rt.handle().clone()).unwrap();
    (s, incidents)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every key under `prefix`, with its PTTL.
fn keys_with_ttl(port: u16, prefix: &str) -> Vec<(String, i64)> {
    redis_cli(port, &["--scan", "--pattern", &format!("{prefix}:*")])
        .lines()
        .map(|k| {
            let ttl = redis_cli(port, &["PTTL", k]).parse().unwrap_or(-3);
            (k.to_string(), ttl)
        })
        .collect()
}

fn cleanup(port: u16, prefix: &str) {
    for (k, _) in keys_with_ttl(port, prefix) {
        redis_cli(port, &["DEL", &k]);
    }
}

fn hold(key: &str, holder: &str, amount: i64, limit: i64, ttl_ms: u64) -> Op {
    Op::Acquire(Hold {
        key: key.into(),
        holder: holder.into(),
        amount,
        limit,
        ttl: Duration::from_millis(ttl_ms),
    })
}

fn release(key: &str, holder: &str, settle: i64) -> Op {
    Op::Release(Settlement {
        key: key.into(),
        holder: holder.into(),
        settle,
        ttl: Duration::from_secs(60),
    })
}

fn answer(a: &Result<Answer, StateError>) -> Answer {
    *a.as_ref().expect("an answer")
}

#[test]
fn redis_store_counts_windows_and_holds_atomically_with_expiring_keys() {
    let rt = runtime();
    let p = prefix("ops");
    let (s, incidents) = store(&rt, &config(REDIS, &p, OnUnavailable::Deny));
    rt.block_on(async {
        // Counters.
        assert_eq!(s.incr("p:c", 2, Duration::from_secs(60)).await.unwrap(), 2);
        assert_eq!(
            s.incr("p:c", -5, Duration::from_secs(60)).await.unwrap(),
            -3
        );
        assert_eq!(s.get("p:c").await.unwrap(), Some(-3));
        assert_eq!(s.get("p:none").await.unwrap(), None);
        // A rate window: 3 per minute, then refused with a retry hint; refusals consume nothing.
        for left in [2, 1, 0] {
            let r = s
                .check_rate("p:w", 3, Duration::from_secs(60), 1)
                .await
                .unwrap();
            assert!(r.allowed && r.remaining == left, "{r:?}");
        }
        let r = s
            .check_rate("p:w", 3, Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert!(!r.allowed && r.retry_after > Duration::ZERO, "{r:?}");
        // A counter is not a window.
        assert!(matches!(
            s.check_rate("p:c", 3, Duration::from_secs(60), 1).await,
            Err(StateError::WrongType(_))
        ));
        // Holds: one batch, answers in order.
        let a = s
            .batch(&[
                hold("p:cap", "a", 60, 100, 60_000),
                hold("p:cap", "b", 60, 100, 60_000),
                Op::Get {
                    key: "p:cap".into(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(
            answer(&a[0]),
            Answer::Acquired(HoldState {
                granted: true,
                used: 0,
                held: 60
            })
        );
        assert_eq!(
            answer(&a[1]),
            Answer::Acquired(HoldState {
                granted: false,
                used: 0,
                held: 60
            })
        );
        assert_eq!(answer(&a[2]), Answer::Value(None));
        // Settling a's real use frees the rest of its reservation.
        let r = s
            .batch(&[release("p:cap", "a", 30), hold("p:cap", "b", 60, 100, 200)])
            .await
            .unwrap();
        assert_eq!(answer(&r[0]), Answer::Released(true));
        assert_eq!(
            answer(&r[1]),
            Answer::Acquired(HoldState {
                granted: true,
                used: 30,
                held: 60
            })
        );
        // b's holder dies: its hold expires by itself.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = s
            .batch(&[hold("p:cap", "c", 70, 100, 60_000)])
            .await
            .unwrap();
        assert_eq!(
            answer(&c[0]),
            Answer::Acquired(HoldState {
                granted: true,
                used: 30,
                held: 70
            })
        );
        // A late release still settles but ends nothing.
        let late = s.batch(&[release("p:cap", "b", 5)]).await.unwrap();
        assert_eq!(answer(&late[0]), Answer::Released(false));
        assert_eq!(s.get("p:cap").await.unwrap(), Some(35));
    });
    // Every key is namespaced and expires.
    let keys = keys_with_ttl(6379, &p);
    assert!(keys.len() >= 5, "{keys:?}");
    for (k, ttl) in &keys {
        assert!(k.starts_with(&format!("{p}:{{p:")), "{k}");
        assert!(*ttl > 0, "{k} has no expiry ({ttl})");
    }
    assert_eq!(incidents.get(), 0);
    cleanup(6379, &p);
}

#[test]
fn concurrent_reservations_never_overspend() {
    let rt = runtime();
    let p = prefix("race");
    let (s, _) = store(&rt, &config(REDIS, &p, OnUnavailable::Deny));
    let granted = rt.block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let a = s
                        .batch(&[hold("b:budget", &format!("r{i}"), 10, 95, 60_000)])
                        .await
                        .unwrap();
                    matches!(
                        answer(&a[0]),
                        Answer::Acquired(HoldState { granted: true, .. })
                    )
                })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap() as u32;
        }
        n
    });
    assert_eq!(granted, 9, "40 concurrent reservations of 10 against 95");
    cleanup(6379, &p);
}

/// A private redis-server on `port`, killed on drop.
struct PrivateRedis(Child);

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis_cli(port, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "private redis on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn outage(on_unavailable: OnUnavailable, check: impl Fn(&[Result<Answer, StateError>]) -> bool) {
    let rt = runtime();
    let port = free_port();
    let p = prefix("outage");
    let redis = PrivateRedis::start(port);
    let (s, incidents) = store(
        &rt,
        &config(&format!("redis://127.0.0.1:{port}"), &p, on_unavailable),
    );
    let op = [Op::CheckRate {
        key: "o:w".into(),
        limit: 1000,
        window: Duration::from_secs(60),
        cost: 1,
    }];
    rt.block_on(async {
        assert!(s.batch(&op).await.unwrap()[0].is_ok());
        drop(redis);
        // Every call during the outage answers within the timeout (200 ms), none hangs.
        let mut last = None;
        for _ in 0..20 {
            let started = Instant::now();
            let a = s.batch(&op).await;
            assert!(
                started.elapsed() < Duration::from_millis(400),
                "{:?}",
                started.elapsed()
            );
            match a {
                Ok(a) => {
                    assert!(check(&a), "{on_unavailable:?}: {a:?}");
                    last = Some(answer(&a[0]));
                }
                Err(e) => assert!(check(&[Err(e)]), "{on_unavailable:?}"),
            }
        }
        if on_unavailable == OnUnavailable::Local {
            // The 20 calls were counted in this replica's memory.
            assert!(
                matches!(last, Some(Answer::Rate(r)) if r.remaining == 980),
                "{last:?}"
            );
        }
        assert_eq!(incidents.get(), 1, "one incident per outage, not per call");
        assert!(!s.status().healthy);
        let _redis = PrivateRedis::start(port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.status().healthy {
            assert!(Instant::now() < deadline, "the store did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Counting resumes on Redis (a fresh server: this is its first count).
        let a = s.batch(&op).await.unwrap();
        assert!(
            matches!(answer(&a[0]), Answer::Rate(r) if r.allowed && r.remaining == 999),
            "{a:?}"
        );
        assert_eq!(incidents.get(), 1);
        assert_eq!(s.status().incidents, 1);
    });
}

#[test]
fn outage_local_counts_in_memory_until_redis_is_back() {
    outage(
        OnUnavailable::Local,
        |a| matches!(a[0], Ok(Answer::Rate(r)) if r.allowed),
    );
}

#[test]
fn outage_allow_counts_nothing() {
    outage(
        OnUnavailable::Allow,
        |a| matches!(a[0], Ok(Answer::Rate(r)) if r.allowed && r.remaining == 999),
    );
}

#[test]
fn outage_deny_fails_every_call() {
    outage(OnUnavailable::Deny, |a| {
        matches!(a[0], Err(StateError::Unavailable))
    });
}

/// A private three-node Redis Cluster on free ports; killed on drop.
struct PrivateCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl PrivateCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("gw-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .current_dir(&dir)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(format!("nodes-{port}.conf"))
                    .args(["--save", "", "--appendonly", "no"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server starts")
            })
            .collect();
        let cluster = Self { nodes, ports, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        for port in &cluster.ports {
            while redis_cli(*port, &["PING"]) != "PONG" {
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis_cli(cluster.ports[0], &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_redis_cluster_works_through_the_same_config() {
    let cluster = PrivateCluster::start();
    let rt = runtime();
    let cfg = StateConfig {
        url: Some(RedisUrls::Cluster(
            cluster
                .ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        )),
        ..config(REDIS, &prefix("cluster"), OnUnavailable::Deny)
    };
    let (s, incidents) = store(&rt, &cfg);
    rt.block_on(async {
        // Keys spread over the slots (and so the nodes); one batch reaches them all.
        let ops: Vec<Op> = (0..30)
            .flat_map(|i| {
                [
                    Op::Incr {
                        key: format!("c:{i}"),
                        delta: i,
                        ttl: Duration::from_secs(60),
                    },
                    hold(&format!("cap:{i}"), "r1", 5, 8, 60_000),
                    hold(&format!("cap:{i}"), "r2", 5, 8, 60_000),
                    Op::CheckRate {
                        key: format!("w:{i}"),
                        limit: 1,
                        window: Duration::from_secs(60),
                        cost: 1,
                    },
                ]
            })
            .collect();
        let a = s.batch(&ops).await.unwrap();
        for i in 0..30usize {
            assert_eq!(answer(&a[4 * i]), Answer::Counter(i as i64));
            assert!(matches!(
                answer(&a[4 * i + 1]),
                Answer::Acquired(HoldState { granted: true, .. })
            ));
            assert!(matches!(
                answer(&a[4 * i + 2]),
                Answer::Acquired(HoldState { granted: false, .. })
            ));
            assert!(matches!(answer(&a[4 * i + 3]), Answer::Rate(r) if r.allowed));
        }
        let again = s
            .batch(&[Op::CheckRate {
                key: "w:7".into(),
                limit: 1,
                window: Duration::from_secs(60),
                cost: 1,
            }])
            .await
            .unwrap();
        assert!(
            matches!(answer(&again[0]), Answer::Rate(r) if !r.allowed),
            "{again:?}"
        );
    });
    let used: Vec<usize> = cluster
        .ports
        .iter()
        .map(|p| redis_cli(*p, &["DBSIZE"]).parse().unwrap_or(0))
        .collect();
    assert!(
        used.iter().filter(|n| **n > 0).count() >= 2,
        "keys on one node only: {used:?}"
    );
    assert_eq!(incidents.get(), 0);
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn holds_in_redis(port: u16, prefix: &str, key: &str) -> (String, String) {
    let k = format!("{prefix}:{{{key}}}");
    (
        redis_cli(port, &["GET", &k]),
        redis_cli(port, &["ZCARD", &format!("{k}:h")]),
    )
}

#[test]
fn a_late_reservation_is_released_and_spend_settled_meanwhile_reaches_redis() {
    let rt = runtime();
    let port = free_port();
    let p = prefix("late");
    let redis = PrivateRedis::start(port);
    let cfg = StateConfig {
        timeout: HumanDuration(Duration::from_millis(100)),
        ..config(
            &format!("redis://127.0.0.1:{port}"),
            &p,
            OnUnavailable::Local,
        )
    };
    let (s, incidents) = store(&rt, &cfg);
    rt.block_on(async {
        // Warm: connection and scripts.
        s.batch(&[Op::Get { key: "x".into() }]).await.unwrap();
        // Redis freezes while a reservation is on its way: the call times out (and gets a local
        // answer), but Redis runs it when it wakes up.
        signal(&redis.0, "-STOP");
        let late = s
            .batch(&[hold("b:cap", "r1", 50, 100, 600_000)])
            .await
            .unwrap();
        assert!(late[0].is_ok(), "{late:?}");
        signal(&redis.0, "-CONT");
        let deadline = Instant::now() + Duration::from_secs(5);
        // The late hold is released behind it: nothing stays held for a request that is over.
        while holds_in_redis(port, &p, "b:cap").1 != "0" {
            assert!(
                Instant::now() < deadline,
                "the late reservation stayed held: {:?}",
                holds_in_redis(port, &p, "b:cap")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(incidents.get(), 0, "one slow answer is not an outage");
        assert!(s.status().healthy);

        // An outage: a hold taken on Redis before it, settled during it.
        let a = s
            .batch(&[hold("b:cap", "r2", 50, 100, 600_000)])
            .await
            .unwrap();
        assert!(
            matches!(
                answer(&a[0]),
                Answer::Acquired(HoldState { granted: true, .. })
            ),
            "{a:?}"
        );
        signal(&redis.0, "-STOP");
        for _ in 0..3 {
            let _ = s.batch(&[Op::Get { key: "y".into() }]).await;
        }
        assert_eq!(incidents.get(), 1, "three timeouts in a row are an outage");
        s.batch(&[release("b:cap", "r2", 40)]).await.unwrap();
        signal(&redis.0, "-CONT");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.status().healthy {
            assert!(Instant::now() < deadline, "the store did not come back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The spend settled during the outage is in Redis, and the hold is gone.
        assert_eq!(
            holds_in_redis(port, &p, "b:cap"),
            ("40".to_string(), "0".to_string())
        );
        let b = s
            .batch(&[hold("b:cap", "r3", 60, 100, 600_000)])
            .await
            .unwrap();
        assert_eq!(
            answer(&b[0]),
            Answer::Acquired(HoldState {
                granted: true,
                used: 40,
                held: 60
            })
        );
    });
}

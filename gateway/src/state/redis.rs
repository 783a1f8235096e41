//! The Redis store: counters, rate windows and holds shared by every replica.
//!
//! Every operation is atomic on the server: a counter read is one `GET`; everything that
//! reads and writes is a Lua script (`lua/`), sent by its SHA-1 (`EVALSHA`) and re-sent whole
//! (`EVAL`) the one time a server answers that it does not know it (after a restart). A batch
//! is one round trip: a pipeline on a single node; on a cluster one pipeline per key, in the
//! batch's order, each to its key's node, all concurrently.
//!
//! Key layout under `key_prefix` (the plugin's key in braces, a cluster hash tag, so that a
//! capacity's three keys live in one slot):
//! - `<prefix>:{<plugin>:<key>}`: a counter (string) or a rate window (hash `s c p w`);
//! - `<prefix>:{<plugin>:<key>}:h` and `...:a`: a capacity's open holds (sorted set of holder
//!   by expiry, hash of holder to amount), expiring with the last hold.
//!
//! Every key carries a TTL ([`super::MAX_TTL`] at most). Times inside scripts are the Redis
//! server's clock, so replicas with skewed clocks still share one window.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisError, RedisResult, Value};

use super::{Answer, Answers, HoldState, Op, RateCheck, StateError, StateStore};
use crate::config::state::RedisUrls;

/// A Lua script: its text, and its SHA-1 (what `EVALSHA` names it by).
struct Script {
    text: &'static str,
    hash: String,
}

impl Script {
    fn new(text: &'static str) -> Self {
        Self {
            text,
            hash: redis::Script::new(text).get_hash().to_string(),
        }
    }
}

/// The Lua scripts, loaded once per server.
struct Scripts {
    incr: Script,
    rate: Script,
    acquire: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            incr: Script::new(include_str!("lua/incr.lua")),
            rate: Script::new(include_str!("lua/rate.lua")),
            acquire: Script::new(include_str!("lua/acquire.lua")),
            release: Script::new(include_str!("lua/release.lua")),
        }
    }
}

/// How the store reaches Redis.
enum Conn {
    /// One node, through a reconnecting multiplexed connection.
    Node(ConnectionManager),
    /// A cluster; connected on first use (and again after a failure).
    Cluster {
        client: Box<ClusterClient>,
        conn: ArcSwapOption<ClusterConnection>,
    },
}

/// A Redis node or cluster as a [`StateStore`].
pub struct RedisStore {
    conn: Arc<Conn>,
    /// Where the connections live and every exchange runs (the gateway's background
    /// runtime), whichever worker asked.
    runtime: tokio::runtime::Handle,
    scripts: Scripts,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn backend(e: RedisError) -> StateError {
    StateError::Backend(e.to_string())
}

/// The ms of a TTL as the store keeps it.
fn ttl_ms(ttl: Duration) -> u64 {
    (super::effective_ttl(ttl).as_millis() as u64).max(1)
}

impl RedisStore {
    /// A store for `urls`, without connecting yet (the first batch connects; Redis may be down
    /// when the gateway starts). `timeout` bounds connecting and each answer.
    pub fn new(
        urls: &RedisUrls,
        prefix: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, StateError> {
        // rediss:// needs a process-wide rustls provider (both are compiled in).
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The connection manager starts its driver task on the current runtime.
        let _entered = runtime.enter();
        // The caller bounds each batch by `timeout` itself (and tells a slow answer from a dead
        // server); the client's own answer deadline only catches a connection gone silent.
        let silent = (timeout * 4).max(Duration::from_secs(1));
        let conn = match urls {
            RedisUrls::One(url) => {
                let client = redis::Client::open(url.as_str()).map_err(backend)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(silent))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                Conn::Node(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(backend)?,
                )
            }
            RedisUrls::Cluster(urls) => Conn::Cluster {
                client: Box::new(
                    ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(timeout)
                        .response_timeout(silent)
                        .retries(1)
                        .build()
                        .map_err(backend)?,
                ),
                conn: ArcSwapOption::empty(),
            },
        };
        Ok(Self {
            conn: Arc::new(conn),
            runtime,
            scripts: Scripts::new(),
            prefix: prefix.to_string(),
        })
    }

    /// Loads every script into the server's cache, so batches can name them by hash (done at
    /// start, when Redis comes back after an outage, and after a server forgot them).
    pub async fn load_scripts(&self) -> Result<(), StateError> {
        let s = &self.scripts;
        let cmds = [&s.incr, &s.rate, &s.acquire, &s.release]
            .into_iter()
            .map(|script| {
                let mut c = redis::cmd("SCRIPT");
                c.arg("LOAD").arg(script.text);
                (None, c)
            })
            .collect();
        for answer in self.run(cmds).await? {
            answer.map_err(backend)?;
        }
        Ok(())
    }

    /// The Redis key of a plugin's key.
    fn key(&self, key: &str) -> String {
        format!("{}:{{{key}}}", self.prefix)
    }

    fn script(script: &Script, keys: &[String], args: &[String], whole: bool) -> Cmd {
        let mut cmd = if whole {
            let mut c = redis::cmd("EVAL");
            c.arg(script.text);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&script.hash);
            c
        };
        cmd.arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    /// The command of one operation; `whole` sends a script's text instead of its hash.
    fn command(&self, op: &Op, whole: bool) -> Cmd {
        let s = &self.scripts;
        match op {
            Op::Get { key } => {
                let mut c = redis::cmd("GET");
                c.arg(self.key(key));
                c
            }
            Op::Incr { key, delta, ttl } => Self::script(
                &s.incr,
                &[self.key(key)],
                &[delta.to_string(), ttl_ms(*ttl).to_string()],
                whole,
            ),
            Op::CheckRate {
                key,
                limit,
                window,
                cost,
            } => Self::script(
                &s.rate,
                &[self.key(key)],
                &[
                    limit.to_string(),
                    (window.as_millis() as u64).max(1).to_string(),
                    cost.to_string(),
                ],
                whole,
            ),
            Op::Acquire(h) => Self::script(
                &s.acquire,
                &self.capacity_keys(&h.key),
                &[
                    h.holder.clone(),
                    h.amount.max(0).to_string(),
                    h.limit.to_string(),
                    ttl_ms(h.ttl).to_string(),
                ],
                whole,
            ),
            Op::Release(r) => Self::script(
                &s.release,
                &self.capacity_keys(&r.key),
                &[
                    r.holder.clone(),
                    r.settle.to_string(),
                    ttl_ms(r.ttl).to_string(),
                ],
                whole,
            ),
        }
    }

    fn keyed(&self, op: &Op, whole: bool) -> Keyed {
        (Some(op.key().to_string()), self.command(op, whole))
    }

    /// A capacity's keys: its settled counter, its holds' expiries, its holds' amounts.
    fn capacity_keys(&self, key: &str) -> [String; 3] {
        let k = self.key(key);
        [k.clone(), format!("{k}:h"), format!("{k}:a")]
    }

    /// Sends `cmds` in one round trip on the store's runtime; one answer per command. Each
    /// command comes with the plugin key it works on (`None`: no key, such as `SCRIPT LOAD`).
    async fn run(&self, cmds: Vec<Keyed>) -> Result<Vec<RedisResult<Value>>, StateError> {
        self.runtime
            .spawn(send(Arc::clone(&self.conn), cmds))
            .await
            .map_err(|e| StateError::Backend(e.to_string()))?
    }
}

/// A command and the plugin key it works on (its cluster hash tag), if any.
type Keyed = (Option<String>, Cmd);

/// Sends `cmds` in one round trip; one answer per command.
async fn send(conn: Arc<Conn>, cmds: Vec<Keyed>) -> Result<Vec<RedisResult<Value>>, StateError> {
    {
        match &*conn {
            Conn::Node(manager) => {
                let mut pipe = redis::pipe();
                for (_, c) in cmds {
                    pipe.add_command(c);
                }
                let mut conn = manager.clone();
                pipe.ignore_errors()
                    .query_async::<Vec<RedisResult<Value>>>(&mut conn)
                    .await
                    .map_err(backend)
            }
            Conn::Cluster { client, conn } => {
                let connection = match conn.load_full() {
                    Some(c) => c,
                    None => {
                        let c = Arc::new(client.get_async_connection().await.map_err(backend)?);
                        conn.store(Some(c.clone()));
                        c
                    }
                };
                let answers = cluster_round_trip(&connection, cmds).await?;
                if let Some(Err(e)) = answers.first() {
                    if answers.iter().all(Result::is_err) && !is_server_error(e) {
                        // Connection trouble: connect afresh next time.
                        conn.store(None);
                        return Err(backend(e.clone()));
                    }
                }
                Ok(answers)
            }
        }
    }
}

/// A cluster round trip: the commands on one key go as one pipeline, in order, to that key's
/// node; different keys (and keyless commands, which the client routes itself) go concurrently.
async fn cluster_round_trip(
    connection: &ClusterConnection,
    cmds: Vec<Keyed>,
) -> Result<Vec<RedisResult<Value>>, StateError> {
    let mut groups: Vec<(Option<String>, Vec<usize>, redis::Pipeline)> = Vec::new();
    let n = cmds.len();
    for (i, (key, cmd)) in cmds.into_iter().enumerate() {
        let found = match &key {
            Some(_) => groups.iter_mut().find(|(k, _, _)| *k == key),
            None => None,
        };
        match found {
            Some((_, members, pipe)) => {
                members.push(i);
                pipe.add_command(cmd);
            }
            None => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd).ignore_errors();
                groups.push((key, vec![i], pipe));
            }
        }
    }
    let sent: Vec<_> = groups
        .into_iter()
        .map(|(_, members, pipe)| {
            let mut connection = connection.clone();
            let task = tokio::spawn(async move {
                pipe.query_async::<Vec<RedisResult<Value>>>(&mut connection)
                    .await
            });
            (members, task)
        })
        .collect();
    let mut answers: Vec<Option<RedisResult<Value>>> = (0..n).map(|_| None).collect();
    for (members, task) in sent {
        let group = task.await.map_err(|e| StateError::Backend(e.to_string()))?;
        match group {
            Ok(results) => {
                for (i, r) in members.into_iter().zip(results) {
                    answers[i] = Some(r);
                }
            }
            Err(e) => {
                for i in members {
                    answers[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(RedisError::from((redis::ErrorKind::Io, "no answer")))))
        .collect())
}

/// Whether an error is the server's answer (a script error, a wrong type), not the link's.
fn is_server_error(e: &RedisError) -> bool {
    e.code().is_some() && !e.is_io_error() && !e.is_timeout()
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn ints<const N: usize>(v: &Value) -> Option<[i64; N]> {
    let Value::Array(items) = v else { return None };
    let mut out = [0; N];
    for (o, item) in out.iter_mut().zip(items.iter()) {
        *o = int(item)?;
    }
    (items.len() == N).then_some(out)
}

/// Reads the server's answer to `op`.
fn parse(op: &Op, answer: RedisResult<Value>) -> Result<Answer, StateError> {
    let value = match answer {
        Ok(v) => v,
        Err(e) if e.code() == Some("WRONGTYPE") => {
            return Err(StateError::WrongType(op.key().to_string()))
        }
        Err(e) if e.to_string().contains("WRONGTYPE") => {
            return Err(StateError::WrongType(op.key().to_string()))
        }
        Err(e) => return Err(backend(e)),
    };
    let bad = || StateError::Backend(format!("unexpected answer {value:?} to {op:?}"));
    Ok(match op {
        Op::Get { .. } => match &value {
            Value::Nil => Answer::Value(None),
            v => Answer::Value(Some(int(v).ok_or_else(bad)?)),
        },
        Op::Incr { .. } => Answer::Counter(int(&value).ok_or_else(bad)?),
        Op::CheckRate { .. } => {
            let [allowed, remaining, retry] = ints::<3>(&value).ok_or_else(bad)?;
            Answer::Rate(RateCheck {
                allowed: allowed == 1,
                remaining: remaining.max(0) as u64,
                retry_after: Duration::from_millis(retry.max(0) as u64),
            })
        }
        Op::Acquire(_) => {
            let [granted, used, held] = ints::<3>(&value).ok_or_else(bad)?;
            Answer::Acquired(HoldState {
                granted: granted == 1,
                used,
                held,
            })
        }
        Op::Release(_) => Answer::Released(int(&value).ok_or_else(bad)? == 1),
    })
}

fn is_noscript(answer: &RedisResult<Value>) -> bool {
    matches!(answer, Err(e) if e.code() == Some("NOSCRIPT"))
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn batch(&self, ops: &[Op]) -> Result<Answers, StateError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut answers = self
            .run(ops.iter().map(|op| self.keyed(op, false)).collect())
            .await?;
        if answers.len() != ops.len() {
            return Err(StateError::Backend(format!(
                "{} answers to {} operations",
                answers.len(),
                ops.len()
            )));
        }
        // A server that restarted has forgotten the scripts: send those whole, once.
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| is_noscript(&answers[i]))
            .collect();
        if !unknown.is_empty() {
            let again = self
                .run(unknown.iter().map(|&i| self.keyed(&ops[i], true)).collect())
                .await?;
            for (i, answer) in unknown.into_iter().zip(again) {
                answers[i] = answer;
            }
        }
        Ok(ops
            .iter()
            .zip(answers)
            .map(|(op, answer)| parse(op, answer))
            .collect())
    }

    fn status(&self) -> super::StoreStatus {
        super::StoreStatus {
            backend: "redis",
            ..super::StoreStatus::memory()
        }
    }
}

//! The load of a schedule: three publishers running side by side until the load window ends.
//!
//! * NATS: JetStream publishes at `nats_rate` per second. Every logical send carries its own
//!   `Nats-Msg-Id` and is retried with that same id on a timeout or an error until it is
//!   acknowledged, so a retry never becomes a second stream message; about 30% of sends are
//!   intentional duplicates (an earlier `(topic, event_id)`, sometimes one of the HTTP
//!   publisher's, with a new message id).
//! * HTTP: `POST /publish` of 1..=N events to a random replica, with an `Idempotency-Key` per
//!   logical request, retried with the same key (possibly on another replica) on 503, 5xx,
//!   timeouts and connection errors.
//! * Invalid: a few raw messages (bad JSON, missing fields, a body topic that differs from
//!   its subject...) at planned times, each retried until JetStream acknowledges it.
//!
//! What each generator sends is a function of its seed only (the timing is not). Every key
//! whose publish was acknowledged (PubAck or 202) is recorded: those must all be stored.
//! Nothing here decides what *is* in the stream: a publish that timed out may or may not have
//! been stored, so the invariants read the stream back instead.

use super::schedule::{InvalidKind, InvalidSend, LoadPlan};
use async_nats::jetstream::context::Publish;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// A send is abandoned (and not counted as acknowledged) after retrying this long.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);
/// One publish attempt (send + PubAck) may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Logical NATS sends in flight at once.
const NATS_IN_FLIGHT: usize = 128;
/// HTTP requests in flight at once.
const HTTP_IN_FLIGHT: usize = 8;

/// An event key: (topic, event_id).
pub type Key = (String, String);

/// What the load did.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Logical NATS sends started / acknowledged / abandoned.
    pub nats_sent: u64,
    pub nats_acked: u64,
    pub nats_abandoned: u64,
    /// Publish attempts that were retries (same message id).
    pub nats_retries: u64,
    /// HTTP requests started / acknowledged (202) / abandoned, and events in the 202s.
    pub http_requests: u64,
    pub http_acked_requests: u64,
    pub http_abandoned: u64,
    pub http_retries: u64,
    pub http_events_acked: u64,
    /// Invalid messages acknowledged by JetStream.
    pub invalid_acked: u64,
    pub invalid_abandoned: u64,
    /// Every key whose publish was acknowledged.
    pub acked_keys: HashSet<Key>,
    /// Answers that mean the checker itself sent something wrong (e.g. a 422).
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Shared {
    out: Mutex<LoadOutcome>,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut LoadOutcome) -> T) -> T {
        let mut guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

/// The key of the `k`-th unique NATS event: id `n<k>`, topic fixed by `k`.
fn nats_key(topics: &[String], k: u64) -> Key {
    (
        topics[(k.wrapping_mul(7).wrapping_add(3) % topics.len() as u64) as usize].clone(),
        format!("n{k}"),
    )
}

/// The key of the `k`-th unique HTTP event: id `h<k>`, topic fixed by `k`.
fn http_key(topics: &[String], k: u64) -> Key {
    (
        topics[(k % topics.len() as u64) as usize].clone(),
        format!("h{k}"),
    )
}

/// Draws the key of the next event of a generator: a new unique key, an intentional
/// duplicate of an earlier one (mostly its own, sometimes the other generator's), or an
/// existing event id on another topic (a new key).
fn next_key(
    rng: &mut ChaCha8Rng,
    plan: &LoadPlan,
    own: fn(&[String], u64) -> Key,
    other: fn(&[String], u64) -> Key,
    made: &mut u64,
) -> Key {
    let topics = &plan.topics;
    if *made > 0 && rng.random_bool(plan.duplicate_rate) {
        let k = rng.random_range(0..*made);
        return match rng.random_range(0..20u32) {
            // The other generator's k-th key: it may not be published yet (then ours is the
            // first copy), which is fine: the stream decides.
            0..=2 => other(topics, k),
            3 if topics.len() > 1 => {
                let (topic, id) = own(topics, k);
                let shift = rng.random_range(1..topics.len());
                let i = topics.iter().position(|t| *t == topic).unwrap_or(0);
                (topics[(i + shift) % topics.len()].clone(), id)
            }
            _ => own(topics, k),
        };
    }
    let key = own(topics, *made);
    *made += 1;
    key
}

fn event_body(rng: &mut ChaCha8Rng, key: &Key) -> Value {
    json!({
        "topic": key.0,
        "event_id": key.1,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "source": format!("SAT-{:04}", rng.random_range(1..=50u32)),
        "payload": {
            "battery_charge_percent": f64::from(rng.random_range(0..=1000u32)) / 10.0,
            "storage_usage_mb": f64::from(rng.random_range(0..=100_000u32)),
            "signal_strength_dbm": -f64::from(rng.random_range(30..=120u32)),
            "is_anomaly": rng.random_bool(0.05),
        },
    })
}

/// Paces a loop at `rate` per second without bursting after a stall: when it falls more
/// than half a second behind, it forgets the missed slots.
struct Pacer {
    next: tokio::time::Instant,
    every: Duration,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            next: tokio::time::Instant::now(),
            every: Duration::from_secs_f64(1.0 / rate.max(0.1)),
        }
    }

    async fn tick(&mut self) {
        let now = tokio::time::Instant::now();
        let slack = Duration::from_millis(500);
        if self.next + slack < now {
            self.next = now - slack;
        }
        tokio::time::sleep_until(self.next).await;
        self.next += self.every;
    }
}

/// Publishes one message to JetStream with message id `msg_id`, retrying with the same id
/// until it is acknowledged or [`GIVE_UP_AFTER`] passes. Returns the attempts made and
/// whether it was acknowledged.
async fn publish_until_acked(
    js: &async_nats::jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> (u64, bool) {
    let started = Instant::now();
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        attempts += 1;
        let attempt = async {
            let publish = Publish::build().payload(payload.clone()).message_id(msg_id);
            js.send_publish(subject.to_string(), publish)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        if let Ok(Ok(_ack)) = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            return (attempts, true);
        }
        if started.elapsed() >= GIVE_UP_AFTER {
            return (attempts, false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// A JetStream context on a client connected to the cluster (fails over between nodes and
/// notices a dead or frozen server within seconds).
pub async fn jetstream(urls: &str) -> Result<async_nats::jetstream::Context, String> {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("NATS URLs {urls:?}: {e}"))?;
    let client = async_nats::ConnectOptions::new()
        .name("fault-checker")
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| format!("connect to {urls}: {e}"))?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(ATTEMPT_TIMEOUT);
    Ok(js)
}

async fn nats_publisher(plan: Arc<LoadPlan>, js: async_nats::jetstream::Context, sh: Arc<Shared>) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.nats_seed);
    let end = tokio::time::Instant::now() + plan.duration;
    let permits = Arc::new(Semaphore::new(NATS_IN_FLIGHT));
    let mut pacer = Pacer::new(f64::from(plan.nats_rate));
    let mut tasks = JoinSet::new();
    let mut made = 0u64;
    let mut i = 0u64;
    loop {
        pacer.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let key = next_key(&mut rng, &plan, nats_key, http_key, &mut made);
        let body = Bytes::from(serde_json::to_vec(&event_body(&mut rng, &key)).unwrap_or_default());
        let msg_id = format!("n-{i}");
        i += 1;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let js = js.clone();
        let sh = sh.clone();
        sh.with(|o| o.nats_sent += 1);
        tasks.spawn(async move {
            let subject = format!("events.{}", key.0);
            let (attempts, acked) = publish_until_acked(&js, &subject, &msg_id, body).await;
            drop(permit);
            sh.with(|o| {
                o.nats_retries += attempts - 1;
                if acked {
                    o.nats_acked += 1;
                    o.acked_keys.insert(key);
                } else {
                    o.nats_abandoned += 1;
                }
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Sends one logical HTTP request until a replica answers 202 (same Idempotency-Key on every
/// attempt, a random replica each time). Returns (attempts, Ok(accepted) | Err(reason)).
async fn post_until_accepted(
    client: &reqwest::Client,
    urls: &[String],
    rng: &mut ChaCha8Rng,
    key: &str,
    body: &Value,
) -> (u64, Result<u64, String>) {
    let started = Instant::now();
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(100);
    let mut last;
    loop {
        attempts += 1;
        let url = &urls[rng.random_range(0..urls.len())];
        let resp = client
            .post(format!("{url}/publish"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match resp {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                if status == 202 {
                    let accepted = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["accepted"].as_u64());
                    return match accepted {
                        Some(n) => (attempts, Ok(n)),
                        None => (attempts, Err(format!("202 without accepted: {text}"))),
                    };
                }
                if !(status >= 500 || status == 408 || status == 429) {
                    return (
                        attempts,
                        Err(format!("POST {url}/publish -> {status}: {text}")),
                    );
                }
                last = format!("{status}: {text}");
            }
            Err(e) => last = e.to_string(),
        }
        if started.elapsed() >= GIVE_UP_AFTER {
            return (attempts, Err(format!("gave up; last answer: {last}")));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn http_publisher(plan: Arc<LoadPlan>, urls: Arc<Vec<String>>, sh: Arc<Shared>) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.http_seed);
    let client = http_client();
    let end = tokio::time::Instant::now() + plan.duration;
    let permits = Arc::new(Semaphore::new(HTTP_IN_FLIGHT));
    let mut pacer = Pacer::new(f64::from(plan.http_rps));
    let mut tasks = JoinSet::new();
    let mut made = 0u64;
    let mut i = 0u64;
    loop {
        pacer.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let n = rng.random_range(1..=plan.http_max_batch);
        let keys: Vec<Key> = (0..n)
            .map(|_| next_key(&mut rng, &plan, http_key, nats_key, &mut made))
            .collect();
        let events: Vec<Value> = keys.iter().map(|k| event_body(&mut rng, k)).collect();
        // Every body shape the API accepts.
        let body = match (rng.random_range(0..3u32), events.len()) {
            (0, 1) => events[0].clone(),
            (1, _) => json!({ "events": events }),
            _ => Value::Array(events),
        };
        let idem = format!("h-{i}");
        i += 1;
        let mut req_rng = ChaCha8Rng::seed_from_u64(rng.random());
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, urls, sh) = (client.clone(), urls.clone(), sh.clone());
        sh.with(|o| o.http_requests += 1);
        tasks.spawn(async move {
            let (attempts, result) =
                post_until_accepted(&client, &urls, &mut req_rng, &idem, &body).await;
            drop(permit);
            sh.with(|o| {
                o.http_retries += attempts - 1;
                match result {
                    Ok(accepted) => {
                        o.http_acked_requests += 1;
                        o.http_events_acked += accepted;
                        if accepted != keys.len() as u64 {
                            o.errors.push(format!(
                                "request {idem}: 202 accepted {accepted} of {} events",
                                keys.len()
                            ));
                        }
                        o.acked_keys.extend(keys);
                    }
                    Err(e) => {
                        o.http_abandoned += 1;
                        if !e.starts_with("gave up") {
                            o.errors.push(format!("request {idem}: {e}"));
                        }
                    }
                }
            });
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The bytes of an invalid message (each carries a unique event id, so if the product took
/// one for valid it would be a distinct key).
pub fn invalid_body(send: &InvalidSend, topics: &[String], n: usize) -> Bytes {
    let id = format!("bad{n}");
    let event = |topic: &str| {
        json!({
            "topic": topic,
            "event_id": id,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "source": "SAT-0001",
            "payload": {"battery_charge_percent": 50.0},
        })
    };
    let body_topic = &topics[send.body_topic];
    let value = match send.kind {
        InvalidKind::NotJson => return Bytes::from_static(b"\xff\xfe not json {"),
        InvalidKind::TruncatedJson => {
            let full = serde_json::to_vec(&event(body_topic)).unwrap_or_default();
            return Bytes::from(full[..full.len() / 2].to_vec());
        }
        InvalidKind::MissingEventId => {
            let mut e = event(body_topic);
            if let Some(o) = e.as_object_mut() {
                o.remove("event_id");
            }
            e
        }
        InvalidKind::TopicMismatch => event(body_topic),
        InvalidKind::BadTimestamp => {
            let mut e = event(body_topic);
            e["timestamp"] = json!("yesterday at noon");
            e
        }
        InvalidKind::PayloadNotObject => {
            let mut e = event(body_topic);
            e["payload"] = json!("not an object");
            e
        }
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

async fn invalid_publisher(
    plan: Arc<LoadPlan>,
    js: async_nats::jetstream::Context,
    sh: Arc<Shared>,
) {
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for (n, send) in plan.invalid.iter().enumerate() {
        tokio::time::sleep_until(start + send.at).await;
        let subject = format!("events.{}", plan.topics[send.subject_topic]);
        let body = invalid_body(send, &plan.topics, n);
        let (js, sh) = (js.clone(), sh.clone());
        tasks.spawn(async move {
            let (_, acked) = publish_until_acked(&js, &subject, &format!("bad-{n}"), body).await;
            sh.with(|o| {
                if acked {
                    o.invalid_acked += 1;
                } else {
                    o.invalid_abandoned += 1;
                }
            });
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Runs the whole load: returns once the load window is over and every send has been
/// acknowledged or abandoned.
pub async fn run(
    plan: &LoadPlan,
    nats_urls: &str,
    replica_urls: Vec<String>,
) -> Result<LoadOutcome, String> {
    let js = jetstream(nats_urls).await?;
    let plan = Arc::new(plan.clone());
    let sh = Arc::new(Shared::default());
    tokio::join!(
        nats_publisher(plan.clone(), js.clone(), sh.clone()),
        http_publisher(plan.clone(), Arc::new(replica_urls), sh.clone()),
        invalid_publisher(plan.clone(), js, sh.clone()),
    );
    let out = std::mem::take(&mut *sh.out.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(out)
}

//! The satellite-telemetry simulator: turns a seed into a reproducible stream of sends,
//! an exact share of which are intentional duplicates of earlier events.
//!
//! What the seed fixes: which positions are duplicates, which earlier event each duplicate
//! repeats, each event's topic, source and payload values. What it does not fix: the
//! timestamps (wall-clock time of generation) and the event ids (UUIDv7 built from that time
//! and from random bits salted per run), so two runs with the same seed have the same shape
//! but never share an event id.
//!
//! A duplicate repeats an earlier event byte for byte. To keep memory small for long runs the
//! simulator does not keep earlier events' bytes: it keeps each unique event's *recipe*
//! (48 bytes: topic, source, time, id bits and payload values in fixed point) and renders
//! the bytes again from it, which is deterministic.
//!
//! ```no_run
//! # use publisher::simulator::Simulator;
//! let sim = Simulator::new(20_000, 0.3, 10, 100, 42, 0).unwrap();
//! for send in sim {
//!     let send = send.unwrap();
//!     // send.bytes is the event's JSON; send.duplicate says whether it repeats an earlier one.
//! }
//! ```

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use shared::{Event, Limits, ValidationError};
use std::fmt;

/// Topic domains (first token). The first entry of each list forms the first topic,
/// `telemetry.satellite.status`.
const DOMAINS: [&str; 8] = [
    "telemetry",
    "power",
    "comms",
    "thermal",
    "orbit",
    "payload",
    "attitude",
    "ground",
];
/// Topic entities (second token).
const ENTITIES: [&str; 12] = [
    "satellite",
    "battery",
    "antenna",
    "radiator",
    "thruster",
    "sensor",
    "camera",
    "transponder",
    "solar_panel",
    "gyroscope",
    "star_tracker",
    "reaction_wheel",
];
/// Topic actions (third token).
const ACTIONS: [&str; 12] = [
    "status",
    "reading",
    "alert",
    "heartbeat",
    "report",
    "sample",
    "fault",
    "calibration",
    "command_ack",
    "summary",
    "snapshot",
    "threshold",
];

/// Largest accepted `--topics`.
pub const MAX_TOPICS: usize = 100_000;

/// Share of events flagged `is_anomaly`.
const ANOMALY_PROBABILITY: f64 = 0.02;
/// Storage capacity of a simulated satellite, in tenths of MB; a full store is dumped to
/// the ground.
const STORAGE_CAPACITY_TENTHS: u32 = 640_000;

/// The exact number of duplicate sends in a run: `round(count * duplicate_rate)`.
pub fn duplicate_count(count: u64, duplicate_rate: f64) -> u64 {
    // The product is non-negative and at most `count`, so the cast cannot truncate.
    (count as f64 * duplicate_rate).round() as u64
}

/// The first `k` topic names, `<domain>.<entity>.<action>`, always in the same order and
/// all distinct. The first is `telemetry.satellite.status`.
///
/// Index `i` maps to domain `i % D`; the entity and action indices are shifted by the
/// domain index so that neighbouring topics differ in every token (`power.battery.reading`,
/// `comms.antenna.alert`, ...). Each block of `D * E * A` names is a bijection onto the
/// combinations; past the first block the action gets a `-<n>` suffix.
pub fn topic_names(k: usize) -> Vec<String> {
    let (d, e, a) = (DOMAINS.len(), ENTITIES.len(), ACTIONS.len());
    let block = d * e * a;
    (0..k)
        .map(|i| {
            let round = i / block;
            let j = i % block;
            let di = j % d;
            let r = j / d;
            let ei = (r % e + di) % e;
            let ai = ((r / e) % a + di) % a;
            if round == 0 {
                format!("{}.{}.{}", DOMAINS[di], ENTITIES[ei], ACTIONS[ai])
            } else {
                format!(
                    "{}.{}.{}-{}",
                    DOMAINS[di],
                    ENTITIES[ei],
                    ACTIONS[ai],
                    round + 1
                )
            }
        })
        .collect()
}

/// The source name of satellite `i` (0-based): `SAT-0001`, `SAT-0002`, ...
pub fn source_name(i: u32) -> String {
    format!("SAT-{:04}", u64::from(i) + 1)
}

/// One send the simulator asks for.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Position in the run, `0..count`. Also what makes the send's `Nats-Msg-Id` unique.
    pub index: u64,
    /// Whether this send repeats an earlier event (an intentional duplicate).
    pub duplicate: bool,
    /// Index into [`Simulator::topics`].
    pub topic_index: usize,
    /// The event in its JSON wire format.
    pub bytes: Bytes,
}

/// Everything needed to render one unique event again, byte for byte.
#[derive(Debug, Clone, Copy)]
struct Recipe {
    id_bits: u128,
    unix_millis: i64,
    topic: u32,
    source: u32,
    storage_tenths: u32,
    battery_tenths: u16,
    signal_tenths: i16,
    is_anomaly: bool,
}

/// Per-satellite state, so a satellite's readings drift instead of jumping at random.
#[derive(Debug, Clone, Copy)]
struct SatelliteState {
    battery_tenths: u16,
    storage_tenths: u32,
}

/// Generates the run's sends in order; see the module documentation.
pub struct Simulator {
    rng: StdRng,
    topics: Vec<String>,
    sources: Vec<String>,
    satellites: Vec<SatelliteState>,
    /// `plan[i]` is true when send `i` is a duplicate. Exactly `duplicates` entries are true
    /// and `plan[0]` is false.
    plan: Vec<bool>,
    uniques: Vec<Recipe>,
    next: usize,
    duplicates: u64,
    salt: u128,
    limits: Limits,
}

/// Why a simulator could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanError {
    /// The duplicate rate is outside `[0, 1)`.
    Rate(f64),
    /// The topic count is outside `1..=MAX_TOPICS`.
    Topics(usize),
    /// There must be at least one source.
    Sources,
    /// So many duplicates that no unique event is left to duplicate.
    NoUnique {
        count: u64,
        rate: f64,
        duplicates: u64,
    },
    /// The run does not fit in memory on this platform.
    TooLarge(u64),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rate(r) => write!(f, "--duplicate-rate must be in [0, 1), got {r}"),
            Self::Topics(k) => write!(f, "--topics must be between 1 and {MAX_TOPICS}, got {k}"),
            Self::Sources => write!(f, "--sources must be at least 1"),
            Self::NoUnique {
                count,
                rate,
                duplicates,
            } => write!(
                f,
                "--count {count} with --duplicate-rate {rate} gives {duplicates} duplicates, \
                 which leaves no unique event to duplicate; raise --count or lower --duplicate-rate"
            ),
            Self::TooLarge(n) => write!(f, "--count {n} is too large for this machine"),
        }
    }
}

impl std::error::Error for PlanError {}

impl Simulator {
    /// A simulator for `count` sends of which exactly `round(count * duplicate_rate)` are
    /// duplicates, over `topics` topics and `sources` satellites. `salt` is mixed into every
    /// event id's random bits (pass fresh randomness per run so ids never repeat across runs
    /// with the same seed; tests pass 0).
    pub fn new(
        count: u64,
        duplicate_rate: f64,
        topics: usize,
        sources: u32,
        seed: u64,
        salt: u128,
    ) -> Result<Self, PlanError> {
        if !(0.0..1.0).contains(&duplicate_rate) {
            return Err(PlanError::Rate(duplicate_rate));
        }
        if !(1..=MAX_TOPICS).contains(&topics) {
            return Err(PlanError::Topics(topics));
        }
        if sources == 0 {
            return Err(PlanError::Sources);
        }
        let len = usize::try_from(count).map_err(|_| PlanError::TooLarge(count))?;
        let duplicates = duplicate_count(count, duplicate_rate);
        if count > 0 && duplicates >= count {
            return Err(PlanError::NoUnique {
                count,
                rate: duplicate_rate,
                duplicates,
            });
        }

        let mut rng = StdRng::seed_from_u64(seed);
        let mut plan = vec![false; len];
        // `duplicates < count`, so it fits in usize too.
        for slot in plan.iter_mut().take(duplicates as usize) {
            *slot = true;
        }
        plan.shuffle(&mut rng);
        // The first send must be new: there is nothing earlier to repeat.
        if plan.first() == Some(&true) {
            if let Some(j) = plan.iter().position(|d| !d) {
                plan.swap(0, j);
            }
        }

        let satellites = (0..sources)
            .map(|_| SatelliteState {
                battery_tenths: rng.random_range(400..=1000),
                storage_tenths: rng.random_range(0..300_000),
            })
            .collect();

        Ok(Self {
            rng,
            topics: topic_names(topics),
            sources: (0..sources).map(source_name).collect(),
            satellites,
            plan,
            uniques: Vec::with_capacity(len - duplicates as usize),
            next: 0,
            duplicates,
            salt,
            limits: Limits::default(),
        })
    }

    /// The run's topic names; [`Outgoing::topic_index`] indexes this.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Total sends in the run.
    pub fn count(&self) -> u64 {
        self.plan.len() as u64
    }

    /// How many of the run's sends are duplicates (exactly `round(count * rate)`).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Sends not generated yet.
    pub fn remaining(&self) -> u64 {
        (self.plan.len() - self.next) as u64
    }

    /// Whether send `index` is a duplicate.
    pub fn is_duplicate(&self, index: u64) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.plan.get(i))
            .copied()
            .unwrap_or(false)
    }

    fn new_recipe(&mut self, unix_millis: i64) -> Recipe {
        let rng = &mut self.rng;
        let topic = rng.random_range(0..self.topics.len());
        let source = rng.random_range(0..self.sources.len());
        let id_bits = rng.random::<u128>() ^ self.salt;

        let sat = &mut self.satellites[source];
        // Battery drains slowly and recharges in sunlight; storage fills until a downlink
        // pass empties it.
        let drift: i32 = rng.random_range(-15..=10);
        let mut battery = i32::from(sat.battery_tenths) + drift;
        if battery < 100 {
            battery += rng.random_range(200..=500);
        }
        sat.battery_tenths = battery.clamp(0, 1000) as u16;
        sat.storage_tenths += rng.random_range(0..2_000);
        if sat.storage_tenths > STORAGE_CAPACITY_TENTHS {
            sat.storage_tenths = rng.random_range(0..50_000);
        }
        let is_anomaly = rng.random_bool(ANOMALY_PROBABILITY);
        let signal_tenths: i16 = if is_anomaly {
            rng.random_range(-1200..=-1050)
        } else {
            rng.random_range(-1100..=-300)
        };

        Recipe {
            id_bits,
            unix_millis,
            topic: topic as u32,
            source: source as u32,
            storage_tenths: sat.storage_tenths,
            battery_tenths: sat.battery_tenths,
            signal_tenths,
            is_anomaly,
        }
    }

    /// Renders a recipe to its wire bytes, through `shared::Event` so every event the
    /// publisher sends passes the same validation the aggregator applies.
    fn render(&self, r: &Recipe) -> Result<Bytes, ValidationError> {
        let millis = u64::try_from(r.unix_millis).unwrap_or(0);
        let timestamp = DateTime::<Utc>::from_timestamp_millis(r.unix_millis)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let payload = serde_json::json!({
            "battery_charge_percent": f64::from(r.battery_tenths) / 10.0,
            "storage_usage_mb": f64::from(r.storage_tenths) / 10.0,
            "signal_strength_dbm": f64::from(r.signal_tenths) / 10.0,
            "is_anomaly": r.is_anomaly,
        });
        let event = Event::new(
            self.topics[r.topic as usize].as_str(),
            shared::id::event_id_from_parts(millis, r.id_bits),
            &timestamp,
            self.sources[r.source as usize].as_str(),
            &payload,
            &self.limits,
        )?;
        Ok(Bytes::from(event.to_json()))
    }
}

impl Iterator for Simulator {
    type Item = Result<Outgoing, ValidationError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next;
        let duplicate = *self.plan.get(index)?;
        self.next += 1;
        let recipe = if duplicate {
            // plan[0] is never a duplicate, so `uniques` is not empty here.
            let pick = self.rng.random_range(0..self.uniques.len());
            self.uniques[pick]
        } else {
            let recipe = self.new_recipe(Utc::now().timestamp_millis());
            self.uniques.push(recipe);
            recipe
        };
        Some(self.render(&recipe).map(|bytes| Outgoing {
            index: index as u64,
            duplicate,
            topic_index: recipe.topic as usize,
            bytes,
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.plan.len() - self.next;
        (n, Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn all(sim: Simulator) -> Vec<Outgoing> {
        sim.map(|s| s.expect("generated event is valid")).collect()
    }

    #[test]
    fn duplicate_count_is_exact_and_unique_fills_the_rest() {
        for &(count, rate, seed) in &[
            (20_000u64, 0.3, 42u64),
            (20_000, 0.0, 1),
            (1_000, 0.5, 7),
            (999, 0.333, 9),
            (10, 0.25, 3),
            (3, 0.5, 11),
            (1, 0.0, 5),
            (7, 0.9, 5),
        ] {
            let sends = all(Simulator::new(count, rate, 10, 100, seed, 0).unwrap());
            let expected = (count as f64 * rate).round() as u64;
            let dups = sends.iter().filter(|s| s.duplicate).count() as u64;
            assert_eq!(dups, expected, "count={count} rate={rate} seed={seed}");
            assert_eq!(sends.len() as u64, count);
            let unique = sends.iter().filter(|s| !s.duplicate).count() as u64;
            assert_eq!(unique + dups, count);
            assert_eq!(unique, count - expected);
        }
    }

    #[test]
    fn first_send_is_never_a_duplicate() {
        for seed in 0..200 {
            let mut sim = Simulator::new(5, 0.6, 3, 4, seed, 0).unwrap();
            assert!(!sim.is_duplicate(0));
            assert!(!sim.next().unwrap().unwrap().duplicate, "seed {seed}");
        }
    }

    #[test]
    fn every_duplicate_repeats_an_earlier_event_byte_for_byte() {
        let sends = all(Simulator::new(5_000, 0.4, 25, 50, 123, 0).unwrap());
        let limits = Limits::default();
        let mut seen: HashMap<(String, String), Bytes> = HashMap::new();
        for s in &sends {
            let event = Event::from_json(&s.bytes, &limits).expect("valid event");
            let key = (event.topic().to_owned(), event.event_id().to_owned());
            if s.duplicate {
                let earlier = seen
                    .get(&key)
                    .expect("a duplicate repeats an earlier event");
                assert_eq!(earlier, &s.bytes);
            } else {
                assert!(
                    seen.insert(key, s.bytes.clone()).is_none(),
                    "a new event must have a new (topic, event_id)"
                );
            }
        }
        assert_eq!(seen.len(), 3_000);
    }

    #[test]
    fn same_seed_gives_the_same_shape() {
        let shape = |seed| -> Vec<(usize, bool)> {
            all(Simulator::new(3_000, 0.3, 10, 100, seed, rand::random()).unwrap())
                .iter()
                .map(|s| (s.topic_index, s.duplicate))
                .collect()
        };
        assert_eq!(shape(42), shape(42));
        assert_ne!(shape(42), shape(43));
    }

    #[test]
    fn ids_differ_between_runs_with_the_same_seed() {
        let ids = |salt| -> Vec<String> {
            all(Simulator::new(50, 0.0, 2, 2, 42, salt).unwrap())
                .iter()
                .map(|s| {
                    Event::from_json(&s.bytes, &Limits::default())
                        .unwrap()
                        .event_id()
                        .to_owned()
                })
                .collect()
        };
        let a: HashSet<_> = ids(1).into_iter().collect();
        let b: HashSet<_> = ids(2).into_iter().collect();
        assert!(a.is_disjoint(&b));
    }

    #[test]
    fn generated_events_are_valid_satellite_telemetry() {
        let limits = Limits::default();
        for s in all(Simulator::new(2_000, 0.2, 40, 12, 5, 0).unwrap()) {
            let event = Event::from_json(&s.bytes, &limits).expect("valid event");
            assert!(event.source().starts_with("SAT-"));
            let id = uuid::Uuid::parse_str(event.event_id()).unwrap();
            assert_eq!(id.get_version_num(), 7);
            let ts = serde_json::from_slice::<serde_json::Value>(&s.bytes).unwrap()["timestamp"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
            let p: serde_json::Value = serde_json::from_str(event.payload_json()).unwrap();
            let battery = p["battery_charge_percent"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&battery));
            assert!(p["storage_usage_mb"].as_f64().unwrap() >= 0.0);
            let signal = p["signal_strength_dbm"].as_f64().unwrap();
            assert!((-120.0..=-30.0).contains(&signal));
            assert!(p["is_anomaly"].is_boolean());
        }
    }

    #[test]
    fn topics_are_valid_distinct_and_start_with_satellite_status() {
        let topics = topic_names(5_000);
        assert_eq!(topics[0], "telemetry.satellite.status");
        let distinct: HashSet<_> = topics.iter().collect();
        assert_eq!(distinct.len(), topics.len());
        for t in &topics {
            shared::event::validate_topic(t).unwrap();
            assert_eq!(t.split('.').count(), 3, "{t}");
        }
        assert_eq!(
            topic_names(1),
            vec!["telemetry.satellite.status".to_owned()]
        );
        // The list is a prefix-stable function of k.
        assert_eq!(topic_names(10)[..], topics[..10]);
    }

    #[test]
    fn sources_are_numbered_from_one() {
        assert_eq!(source_name(0), "SAT-0001");
        assert_eq!(source_name(99), "SAT-0100");
        assert_eq!(source_name(12_344), "SAT-12345");
    }

    #[test]
    fn bad_plans_are_rejected() {
        assert_eq!(
            Simulator::new(10, 1.0, 1, 1, 0, 0).err(),
            Some(PlanError::Rate(1.0))
        );
        assert!(Simulator::new(10, -0.1, 1, 1, 0, 0).is_err());
        assert!(Simulator::new(10, f64::NAN, 1, 1, 0, 0).is_err());
        assert!(Simulator::new(10, 0.1, 0, 1, 0, 0).is_err());
        assert!(Simulator::new(10, 0.1, 1, 0, 0, 0).is_err());
        assert!(matches!(
            Simulator::new(1, 0.5, 1, 1, 0, 0),
            Err(PlanError::NoUnique { .. })
        ));
        assert_eq!(Simulator::new(0, 0.5, 1, 1, 0, 0).unwrap().count(), 0);
    }
}

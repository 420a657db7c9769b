//! Start-up reconciliation: an existing stream and consumer brought to the settings.
//!
//! JetStream keeps the configuration a stream or consumer was created with, so a changed
//! setting would be ignored on every start after the first. Here the configuration the
//! server holds is compared with the wanted one ([`super::stream_config`],
//! [`super::consumer_config`]): what JetStream lets one edit is updated, each change logged at
//! info (old -> new); what it does not is logged as one warning naming the setting and what
//! to do.
//!
//! An update starts from the configuration the server holds and changes only the fields the
//! settings own: the stream's identity (metadata or description tag, see [`super`]) and
//! anything an operator added are sent back as they are, since an update replaces the whole
//! configuration. Reconciling is idempotent (a second run finds nothing to change) and runs
//! under the set-up lock, so replicas starting together do not interleave reads and updates.

use super::{consumer_config, stream_config};
use crate::settings::BrokerSettings;
use anyhow::Context;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

/// One field changed: the variable(s) it comes from, and its old and new value for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub setting: &'static str,
    pub old: String,
    pub new: String,
}

/// What reconciliation does to a stream or a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<C> {
    /// The configuration to send: the current one with `changes` applied. `None` when no
    /// editable field differs.
    pub update: Option<C>,
    pub changes: Vec<Change>,
    /// Differences JetStream cannot apply: one line each, naming the setting and what to do.
    pub fixed: Vec<String>,
}

impl<C> Plan<C> {
    fn settings(&self) -> String {
        let names: Vec<&str> = self.changes.iter().map(|c| c.setting).collect();
        names.join(", ")
    }
}

/// JetStream takes 0 and -1 alike for "no limit" on sizes; compared as -1.
fn size_limit(v: i64) -> i64 {
    if v <= 0 {
        -1
    } else {
        v
    }
}

fn show_size(v: i64) -> String {
    match size_limit(v) {
        -1 => "no limit".to_owned(),
        n => format!("{n} bytes"),
    }
}

fn show_age(d: Duration) -> String {
    if d.is_zero() {
        return "no limit".to_owned();
    }
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The stream's limits (age, size, message size, discard policy) brought to `wanted`, and
/// what cannot be changed. Replicas are planned apart ([`replicas_change`]): a server that
/// cannot hold them must not keep the limits from being applied.
pub fn plan_stream(current: &stream::Config, wanted: &stream::Config) -> Plan<stream::Config> {
    let name = &current.name;
    let mut update = current.clone();
    let mut changes = Vec::new();
    if current.max_age != wanted.max_age {
        update.max_age = wanted.max_age;
        changes.push(Change {
            setting: "STREAM_MAX_AGE",
            old: show_age(current.max_age),
            new: show_age(wanted.max_age),
        });
    }
    if size_limit(current.max_bytes) != size_limit(wanted.max_bytes) {
        update.max_bytes = wanted.max_bytes;
        changes.push(Change {
            setting: "STREAM_MAX_BYTES",
            old: show_size(current.max_bytes),
            new: show_size(wanted.max_bytes),
        });
    }
    let (old_size, new_size) = (
        i64::from(current.max_message_size),
        i64::from(wanted.max_message_size),
    );
    if size_limit(old_size) != size_limit(new_size) {
        update.max_message_size = wanted.max_message_size;
        changes.push(Change {
            setting: "STREAM_MAX_MSG_SIZE",
            old: show_size(old_size),
            new: show_size(new_size),
        });
    }
    if current.discard != wanted.discard {
        update.discard = wanted.discard;
        changes.push(Change {
            setting: "discard policy (always old)",
            old: format!("{:?}", current.discard).to_lowercase(),
            new: format!("{:?}", wanted.discard).to_lowercase(),
        });
    }
    let mut fixed = Vec::new();
    if current.storage != wanted.storage {
        fixed.push(format!(
            "stream {name} uses {:?} storage and JetStream cannot change a stream's storage; \
             the aggregator creates {:?} storage (a memory stream loses unprocessed events when \
             the server restarts). To move it: let the aggregator catch up, remove the stream \
             (`nats stream rm {name}`) and restart; the new stream gets a new identity",
            current.storage, wanted.storage
        ));
    }
    for subject in &wanted.subjects {
        if !current.subjects.contains(subject) {
            fixed.push(format!(
                "stream {name} captures subjects {:?}, not {subject:?} that SUBJECT_PREFIX \
                 wants, so events published there find no stream; subjects are not changed \
                 at start-up (they may overlap another stream's): add them with `nats stream \
                 edit {name} --subjects '{subject}'`, or set SUBJECT_PREFIX back",
                current.subjects
            ));
        }
    }
    Plan {
        update: (!changes.is_empty()).then_some(update),
        changes,
        fixed,
    }
}

/// The replica count to move to, if it differs.
pub fn replicas_change(current: &stream::Config, wanted: &stream::Config) -> Option<Change> {
    (current.num_replicas.max(1) != wanted.num_replicas.max(1)).then(|| Change {
        setting: "STREAM_REPLICAS",
        old: current.num_replicas.max(1).to_string(),
        new: wanted.num_replicas.max(1).to_string(),
    })
}

/// The consumer's editable fields (ack wait, ack-pending limit, deliveries) brought to
/// `wanted`, and what cannot be changed.
pub fn plan_consumer(
    stream: &str,
    current: &consumer::Config,
    wanted: &consumer::pull::Config,
) -> Plan<consumer::Config> {
    let name = current
        .durable_name
        .as_deref()
        .or(current.name.as_deref())
        .unwrap_or_default();
    let mut update = current.clone();
    let mut changes = Vec::new();
    if current.ack_wait != wanted.ack_wait {
        update.ack_wait = wanted.ack_wait;
        changes.push(Change {
            setting: "ACK_WAIT",
            old: show_age(current.ack_wait),
            new: show_age(wanted.ack_wait),
        });
    }
    if current.max_ack_pending != wanted.max_ack_pending {
        update.max_ack_pending = wanted.max_ack_pending;
        changes.push(Change {
            setting: "max_ack_pending (MAX_BUFFER_SIZE + 2 x WORKERS x BATCH_SIZE)",
            old: current.max_ack_pending.to_string(),
            new: wanted.max_ack_pending.to_string(),
        });
    }
    // -1 and 0 both mean unlimited deliveries to JetStream.
    if current.max_deliver.max(0) != wanted.max_deliver.max(0) {
        update.max_deliver = wanted.max_deliver;
        changes.push(Change {
            setting: "max_deliver (always unlimited: MAX_DELIVER is applied by the aggregator)",
            old: current.max_deliver.to_string(),
            new: wanted.max_deliver.to_string(),
        });
    }
    let recreate = format!(
        "delete the consumer with `nats consumer rm {stream} {name}` and restart to apply (it \
         is created again and delivers the stream from its start; messages already counted \
         are recognized and not counted again)"
    );
    let mut fixed = Vec::new();
    if current.ack_policy != wanted.ack_policy {
        fixed.push(format!(
            "consumer {name} has ack policy {:?}, the aggregator needs {:?} and JetStream \
             cannot change it: {recreate}",
            current.ack_policy, wanted.ack_policy
        ));
    }
    if current.deliver_policy != wanted.deliver_policy {
        fixed.push(format!(
            "consumer {name} has deliver policy {:?}, the aggregator creates {:?} and \
             JetStream cannot change it: {recreate}",
            current.deliver_policy, wanted.deliver_policy
        ));
    }
    Plan {
        update: (!changes.is_empty()).then_some(update),
        changes,
        fixed,
    }
}

/// Brings the existing stream, and the consumer if it exists, to the settings. Call it
/// holding the set-up lock. Fails only when NATS does not answer; an update the server
/// refuses is logged as a warning naming the settings, and the stream or consumer keeps
/// its configuration.
pub async fn reconcile(js: &jetstream::Context, config: &BrokerSettings) -> anyhow::Result<()> {
    let name = &config.stream_name;
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("reading stream {name}"))?;
    let info = stream.info().await?;
    // Only a clustered server names its cluster; a single one holds one replica.
    let clustered = info.cluster.as_ref().is_some_and(|c| c.name.is_some());
    let mut current = info.config.clone();
    let wanted = stream_config(config);
    let plan = plan_stream(&current, &wanted);
    for line in &plan.fixed {
        tracing::warn!(stream = %name, "{line}");
    }
    if let Some(update) = &plan.update {
        match js.update_stream(update).await {
            Ok(info) => {
                for c in &plan.changes {
                    tracing::info!(stream = %name, setting = c.setting, old = %c.old, new = %c.new, "stream setting updated");
                }
                current = info.config;
            }
            Err(e) => tracing::warn!(
                stream = %name,
                error = %e,
                "stream {name} refused the update of {}; it keeps its limits: fix the values \
                 (the error says which) or the server's storage",
                plan.settings()
            ),
        }
    }
    if let Some(c) = replicas_change(&current, &wanted) {
        let mut update = current.clone();
        update.num_replicas = wanted.num_replicas;
        // A single nats-server 2.9 accepts the update, reports the new count and keeps one
        // replica: it is not asked.
        let refusal = if !clustered && wanted.num_replicas > 1 {
            Some("the server is not part of a cluster".to_owned())
        } else {
            match js.update_stream(&update).await {
                Ok(info) if info.config.num_replicas.max(1) == wanted.num_replicas.max(1) => None,
                Ok(info) => Some(format!(
                    "the server answered with {} replica(s)",
                    info.config.num_replicas.max(1)
                )),
                Err(e) => Some(e.to_string()),
            }
        };
        match refusal {
            None => {
                tracing::info!(stream = %name, setting = c.setting, old = %c.old, new = %c.new, "stream setting updated")
            }
            Some(error) => tracing::warn!(
                stream = %name,
                error = %error,
                "STREAM_REPLICAS={} could not be applied to stream {name}, which keeps {} \
                 replica(s): a single server holds one replica only (set STREAM_REPLICAS=1), \
                 and a cluster needs at least {} servers with JetStream",
                c.new,
                c.old,
                c.new
            ),
        }
    }
    reconcile_consumer(&stream, config).await
}

async fn reconcile_consumer(
    stream: &stream::Stream,
    config: &BrokerSettings,
) -> anyhow::Result<()> {
    let (stream_name, name) = (&config.stream_name, &config.consumer_name);
    let current = match stream.consumer_info(name).await {
        Ok(info) => info.config,
        // Not created yet: it is created with the wanted configuration.
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("reading consumer {name}")));
        }
    };
    let plan = plan_consumer(stream_name, &current, &consumer_config(config));
    for line in &plan.fixed {
        tracing::warn!(consumer = %name, "{line}");
    }
    let Some(update) = plan.update.clone() else {
        return Ok(());
    };
    // Create-or-update: the update action of nats-server 2.10 is unknown to 2.9, which
    // updates an existing consumer this way.
    match stream.create_consumer(update).await {
        Ok(_) => {
            for c in &plan.changes {
                tracing::info!(consumer = %name, setting = c.setting, old = %c.old, new = %c.new, "consumer setting updated");
            }
        }
        Err(e) => tracing::warn!(
            consumer = %name,
            error = %e,
            "consumer {name} refused the update of {}; it keeps its configuration",
            plan.settings()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use crate::settings::Settings;
    use clap::Parser;

    fn broker(args: &[&str]) -> BrokerSettings {
        let mut argv = vec!["aggregator"];
        argv.extend_from_slice(args);
        Settings::from_config(&Cli::try_parse_from(argv).unwrap().config).broker
    }

    #[test]
    fn the_same_settings_change_nothing() {
        let b = broker(&[]);
        let mut current = stream_config(&b);
        // As the server reports it, carrying an identity.
        current
            .metadata
            .insert(super::super::IDENTITY_KEY.into(), "t".into());
        let plan = plan_stream(&current, &stream_config(&b));
        assert_eq!(plan.update, None);
        assert!(plan.fixed.is_empty(), "{:?}", plan.fixed);
        assert_eq!(replicas_change(&current, &stream_config(&b)), None);
    }

    #[test]
    fn changed_limits_update_only_them_and_keep_the_identity() {
        let mut current = stream_config(&broker(&[]));
        current.description = Some("ops [aggregator.incarnation=abc]".into());
        current.max_messages = 1_000_000;
        let wanted = stream_config(&broker(&[
            "--stream-max-age",
            "1h",
            "--stream-max-bytes",
            "0",
            "--stream-max-msg-size",
            "128KiB",
        ]));
        let plan = plan_stream(&current, &wanted);
        let update = plan.update.unwrap();
        assert_eq!(update.max_age, Duration::from_secs(3600));
        assert_eq!(update.max_bytes, -1);
        assert_eq!(update.max_message_size, 128 * 1024);
        assert_eq!(update.description, current.description);
        assert_eq!(update.max_messages, 1_000_000);
        let settings: Vec<_> = plan.changes.iter().map(|c| c.setting).collect();
        assert_eq!(
            settings,
            ["STREAM_MAX_AGE", "STREAM_MAX_BYTES", "STREAM_MAX_MSG_SIZE"]
        );
        assert_eq!(plan.changes[0].old, "7d");
        assert_eq!(plan.changes[0].new, "1h");
        assert_eq!(plan.changes[1].new, "no limit");
    }

    #[test]
    fn unlimited_is_the_same_whether_zero_or_minus_one() {
        let wanted = stream_config(&broker(&["--stream-max-bytes", "0"]));
        let mut current = wanted.clone();
        current.max_bytes = 0;
        assert_eq!(plan_stream(&current, &wanted).update, None);
    }

    #[test]
    fn storage_and_subjects_are_reported_not_changed() {
        let wanted = stream_config(&broker(&[]));
        let mut current = wanted.clone();
        current.storage = stream::StorageType::Memory;
        current.subjects = vec!["other.>".into()];
        let plan = plan_stream(&current, &wanted);
        assert_eq!(plan.update, None);
        assert_eq!(plan.fixed.len(), 2);
        assert!(
            plan.fixed[0].contains("nats stream rm EVENTS"),
            "{}",
            plan.fixed[0]
        );
        assert!(
            plan.fixed[1].contains("SUBJECT_PREFIX"),
            "{}",
            plan.fixed[1]
        );
    }

    #[test]
    fn consumer_limits_are_updated_and_policies_reported() {
        let old = consumer_config(&broker(&[]));
        let mut current = consumer::IntoConsumerConfig::into_consumer_config(old);
        current.deliver_policy = consumer::DeliverPolicy::New;
        let wanted = consumer_config(&broker(&["--ack-wait", "90s", "--workers", "2"]));
        let plan = plan_consumer("EVENTS", &current, &wanted);
        let update = plan.update.unwrap();
        assert_eq!(update.ack_wait, Duration::from_secs(90));
        assert_eq!(update.max_ack_pending, 10_000 + 2 * 2 * 500);
        // Kept as it is: only JetStream could change it, and it cannot.
        assert_eq!(update.deliver_policy, consumer::DeliverPolicy::New);
        assert_eq!(plan.changes.len(), 2);
        assert_eq!(plan.fixed.len(), 1);
        assert!(
            plan.fixed[0].contains("nats consumer rm EVENTS aggregator"),
            "{}",
            plan.fixed[0]
        );
    }
}

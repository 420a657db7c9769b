//! Subject naming: an event with topic `t` travels on `<prefix>.<t>` (default prefix `events`).
//!
//! Topics are validated to be NATS subject tokens without wildcards (see
//! [`crate::event::validate_topic`]), so the mapping is a plain concatenation and its inverse
//! a prefix strip.

/// Splits a NATS URL setting into its servers: `NATS_URL` may list a cluster's nodes
/// separated by commas (`nats://a:4222,nats://b:4222`).
pub fn nats_servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Default subject prefix (`SUBJECT_PREFIX`).
pub const DEFAULT_PREFIX: &str = "events";

/// The subject an event with `topic` is published on.
pub fn subject_for(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + topic.len());
    s.push_str(prefix);
    s.push('.');
    s.push_str(topic);
    s
}

/// The wildcard subject a stream binds to capture every topic: `<prefix>.>`.
pub fn stream_subjects(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Decodes a stream message body and checks it against the subject it arrived on: NATS
/// permissions are per subject, so a publisher allowed on some subjects must not write other
/// topics. The error says why, for the dead letter.
pub fn decode_message(
    payload: &[u8],
    subject: &str,
    prefix: &str,
    limits: &crate::Limits,
) -> Result<crate::Event, String> {
    let event = crate::Event::from_json(payload, limits).map_err(|e| e.to_string())?;
    if Some(event.topic()) != topic_of(prefix, subject) {
        return Err(format!(
            "topic {:?} in the body does not match subject {subject:?}",
            event.topic()
        ));
    }
    Ok(event)
}

/// The topic carried by `subject`, or `None` when the subject is not under `prefix`.
pub fn topic_of<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_split_on_commas() {
        assert_eq!(nats_servers("nats://a:1"), vec!["nats://a:1"]);
        assert_eq!(
            nats_servers("nats://a:1, nats://b:2,,nats://c:3"),
            vec!["nats://a:1", "nats://b:2", "nats://c:3"]
        );
    }

    #[test]
    fn subject_round_trip() {
        let s = subject_for("events", "telemetry.satellite.status");
        assert_eq!(s, "events.telemetry.satellite.status");
        assert_eq!(topic_of("events", &s), Some("telemetry.satellite.status"));
        assert_eq!(topic_of("events", "eventsx.a"), None);
        assert_eq!(topic_of("events", "events."), None);
        assert_eq!(stream_subjects("events"), "events.>");
    }
}

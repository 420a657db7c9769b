//! Id generation: event ids, and other ids that must be unique without coordination.
//!
//! The publisher uses UUIDv7: 48 bits of Unix milliseconds followed by random bits, so ids are
//! unique without coordination and sort roughly by creation time, which keeps the
//! `(topic, event_id)` index append-mostly.

use uuid::Uuid;

/// A new UUIDv7 event id in its canonical hyphenated form.
pub fn new_event_id() -> String {
    new_id()
}

/// A new UUIDv7 in its canonical hyphenated form: unique without coordination (also the
/// aggregator's stream incarnation tokens).
pub fn new_id() -> String {
    Uuid::now_v7().to_string()
}

/// A deterministic UUIDv7-shaped id from a timestamp and random bits, for reproducible runs
/// (`publisher --seed`).
pub fn event_id_from_parts(unix_millis: u64, random: u128) -> String {
    let millis = unix_millis & 0xFFFF_FFFF_FFFF;
    let mut bytes = random.to_be_bytes();
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    let mut b = uuid::Builder::from_bytes(bytes);
    b.set_version(uuid::Version::SortRand);
    b.set_variant(uuid::Variant::RFC4122);
    b.into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_distinct() {
        let a = new_event_id();
        let b = new_event_id();
        assert_ne!(a, b);
        assert_eq!(Uuid::parse_str(&a).unwrap().get_version_num(), 7);
    }

    #[test]
    fn ids_from_parts_are_deterministic_v7() {
        let a = event_id_from_parts(1_700_000_000_000, 42);
        assert_eq!(a, event_id_from_parts(1_700_000_000_000, 42));
        assert_ne!(a, event_id_from_parts(1_700_000_000_000, 43));
        let u = Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_timestamp().unwrap().to_unix().0, 1_700_000_000);
    }
}

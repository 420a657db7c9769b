//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header a
//! publisher sends with each message and the aggregator keeps with the stored event.
//!
//! The publisher gives every logical send a fresh value ([`new_traceparent`]): each JetStream
//! message (an intentional duplicate is a send of its own, so it gets its own), and each
//! `POST /publish` batch. A retry of the same send reuses its value, like it reuses its
//! `Nats-Msg-Id` or `Idempotency-Key`: it is the same operation, attempted again. A receiver
//! keeps only a well-formed value ([`parse`]).

use rand::Rng;
use std::num::{NonZeroU128, NonZeroU64};

/// The header name (lowercase, as the spec writes it).
pub const HEADER: &str = "traceparent";

/// A fresh `traceparent`: version `00`, a random 16-byte trace id, a random 8-byte parent
/// (span) id, flags `01` (sampled). Neither id is ever all zeros (the spec forbids it).
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let trace_id: NonZeroU128 = rng.random();
    let span_id: NonZeroU64 = rng.random();
    format_traceparent(trace_id, span_id)
}

/// `00-<32 lowercase hex>-<16 lowercase hex>-01`.
fn format_traceparent(trace_id: NonZeroU128, span_id: NonZeroU64) -> String {
    format!("00-{:032x}-{:016x}-01", trace_id.get(), span_id.get())
}

/// `v` if it is a well-formed version-00 `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, ids
/// not all zeros, version not `ff`), lowercased; `None` otherwise.
pub fn parse(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2);
    ok.then(|| v.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Checks `v` against the spec's version-00 grammar, the way a strict receiver would.
    fn assert_well_formed(v: &str) {
        let parts: Vec<&str> = v.split('-').collect();
        assert_eq!(parts.len(), 4, "{v}");
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        assert_eq!(parts[0], "00", "version: {v}");
        assert_eq!(parts[1].len(), 32, "trace id: {v}");
        assert_eq!(parts[2].len(), 16, "parent id: {v}");
        assert_eq!(parts[3], "01", "flags: {v}");
        for p in &parts[1..3] {
            assert!(lower_hex(p), "not lowercase hex: {v}");
            assert!(p.bytes().any(|b| b != b'0'), "all zeros: {v}");
        }
        assert_eq!(v.len(), 55);
    }

    #[test]
    fn traceparent_is_version_00_lowercase_hex_and_never_all_zeros() {
        let values: Vec<String> = (0..1_000).map(|_| new_traceparent()).collect();
        for v in &values {
            assert_well_formed(v);
        }
        // Random per call: no trace id (or span id) repeats.
        let traces: HashSet<&str> = values.iter().map(|v| &v[3..35]).collect();
        let spans: HashSet<&str> = values.iter().map(|v| &v[36..52]).collect();
        assert_eq!(traces.len(), values.len());
        assert_eq!(spans.len(), values.len());
    }

    #[test]
    fn parse_keeps_well_formed_values_only() {
        let spec = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse(spec).as_deref(), Some(spec));
        assert_eq!(parse(&spec.to_uppercase()).as_deref(), Some(spec));
        assert_eq!(parse(&new_traceparent()).map(|v| v.len()), Some(55));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn small_and_large_ids_are_zero_padded_and_lowercase() {
        let one = |n| NonZeroU128::new(n).unwrap();
        let v = format_traceparent(one(1), NonZeroU64::new(0xab).unwrap());
        assert_eq!(v, "00-00000000000000000000000000000001-00000000000000ab-01");
        assert_well_formed(&v);
        let v = format_traceparent(one(u128::MAX), NonZeroU64::new(u64::MAX).unwrap());
        assert_eq!(v, "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01");
        let v = format_traceparent(
            one(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            NonZeroU64::new(0x00f0_67aa_0ba9_02b7).unwrap(),
        );
        // The example of the spec.
        assert_eq!(v, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }
}

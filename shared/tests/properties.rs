//! Property-based tests for the event wire format (DESIGN.md, "Event (JSON)").
//!
//! The heart of this file is an oracle written from the spec, not from `event.rs`: candidate
//! events are built field by field from generators that mix valid and invalid values, rendered
//! to JSON by this file's own encoder (random escapes, whitespace, member order, unknown extra
//! members), and the oracle decides from what it built whether the spec accepts the event and,
//! if not, which field is at fault. The crate must agree.
//!
//! The spec, as the oracle reads it:
//! * anything that is not UTF-8 JSON, or not a JSON object, is rejected with field `body`;
//! * otherwise the first failing field, in the order topic, event_id, timestamp, source,
//!   payload, is named; a field fails when it is missing, of the wrong JSON type, or breaks its
//!   rule:
//!   - `topic`: 1..=255 chars, dot-separated non-empty tokens of `[A-Za-z0-9_-]`;
//!   - `event_id`, `source`: 1..=255 chars (Unicode scalar values), none of them a control
//!     character (`char::is_control`, i.e. general category Cc);
//!   - `timestamp`: RFC 3339 as accepted by chrono's `DateTime::parse_from_rfc3339`, at most 64
//!     characters;
//!   - `payload`: a JSON object whose text as sent is at most `max_payload_bytes` bytes and
//!     holds no NUL in any string or key;
//! * unknown extra members are ignored.
//!
//! Where the crate is known to disagree with that reading, the disagreement is written down in
//! [`Divergence`] and demonstrated by an `#[ignore]`d `spec_divergence_*` test (run them with
//! `cargo test -p shared --test properties -- --ignored`); the main property then skips only
//! the assertion the divergence breaks. Set `SHARED_PROPS_STRICT=1` to skip nothing and let
//! proptest shrink a counterexample instead.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use shared::{Event, Limits};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// The five fields, in the order the spec checks them.
const FIELDS: [&str; 5] = ["topic", "event_id", "timestamp", "source", "payload"];

/// Test-runner settings: `cases` as given (or `PROPTEST_CASES`, for a longer local run), and
/// no regression files written next to the sources.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn strict() -> bool {
    std::env::var_os("SHARED_PROPS_STRICT").is_some()
}

// ---------------------------------------------------------------------------------------------
// The spec, re-implemented.
// ---------------------------------------------------------------------------------------------

mod spec {
    pub const MAX_CHARS: usize = 255;

    pub fn topic_ok(s: &str) -> bool {
        let n = s.chars().count();
        (1..=MAX_CHARS).contains(&n)
            && s.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .chars()
                        .all(|c| matches!(c, 'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-'))
            })
    }

    /// `char::is_control` is Unicode general category Cc: U+0000..=U+001F and U+007F..=U+009F.
    pub fn is_cc(c: char) -> bool {
        matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
    }

    /// The `event_id` and `source` rule.
    pub fn text_ok(s: &str) -> bool {
        let n = s.chars().count();
        (1..=MAX_CHARS).contains(&n) && !s.chars().any(is_cc)
    }

    fn is_leap(y: u32) -> bool {
        (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
    }

    pub fn days_in_month(y: u32, m: u32) -> u32 {
        match m {
            2 if is_leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    struct Cursor<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Cursor<'_> {
        fn digits(&mut self, n: usize) -> Option<u32> {
            let chunk = self.b.get(self.i..self.i + n)?;
            let mut v = 0;
            for &c in chunk {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + u32::from(c - b'0');
            }
            self.i += n;
            Some(v)
        }
        fn eat(&mut self, options: &[&[u8]]) -> Option<()> {
            let rest = &self.b[self.i..];
            let hit = options.iter().find(|o| rest.starts_with(o))?;
            self.i += hit.len();
            Some(())
        }
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }
    }

    /// RFC 3339 `date-time` with the relaxations chrono's `parse_from_rfc3339` documents and
    /// implements: `T`, `t` or a space between date and time; `Z` or `z`; any number (>= 1) of
    /// fraction digits; a leap second `:60`; offsets up to ±23:59 (including `-00:00`); and
    /// U+2212 MINUS SIGN accepted as the offset's minus.
    pub fn timestamp_ok(s: &str) -> bool {
        parse_ts(s).is_some()
    }

    fn parse_ts(s: &str) -> Option<()> {
        let mut c = Cursor {
            b: s.as_bytes(),
            i: 0,
        };
        let year = c.digits(4)?;
        c.eat(&[b"-"])?;
        let month = c.digits(2)?;
        c.eat(&[b"-"])?;
        let day = c.digits(2)?;
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        c.eat(&[b"T", b"t", b" "])?;
        let hour = c.digits(2)?;
        c.eat(&[b":"])?;
        let minute = c.digits(2)?;
        c.eat(&[b":"])?;
        let second = c.digits(2)?;
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        if c.peek() == Some(b'.') {
            c.i += 1;
            let start = c.i;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                c.i += 1;
            }
            if c.i == start {
                return None;
            }
        }
        if c.eat(&[b"Z", b"z"]).is_none() {
            c.eat(&[b"+", b"-", "\u{2212}".as_bytes()])?;
            let oh = c.digits(2)?;
            c.eat(&[b":"])?;
            let om = c.digits(2)?;
            if oh > 23 || om > 59 {
                return None;
            }
        }
        (c.i == c.b.len()).then_some(())
    }
}

// ---------------------------------------------------------------------------------------------
// A JSON model and this file's own encoder.
// ---------------------------------------------------------------------------------------------

/// One unit of a JSON string: a character, or a lone UTF-16 surrogate (only writable as a
/// `\uXXXX` escape, and not a Unicode scalar value).
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    C(char),
    Lone(u16),
}

type JStr = Vec<Piece>;

fn jstr(s: &str) -> JStr {
    s.chars().map(Piece::C).collect()
}

/// Numbers JSON's grammar allows but serde_json cannot hold in a `Value`.
const EXOTIC_NUMBERS: [&str; 4] = ["1e999999", "-1e999999", "1e309", "-2.5E+400"];
/// Ordinary numbers, including a few that lose precision as an f64.
const NUMBERS: [&str; 13] = [
    "0",
    "-0",
    "1.5",
    "85.5",
    "-55.0",
    "1E2",
    "1e-999999",
    "0.000001",
    "45000.0",
    "9007199254740993",
    "-9223372036854775809",
    "18446744073709551616",
    "123456789012345678901234567890",
];

#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    Num(&'static str),
    Str(JStr),
    Arr(Vec<J>),
    Obj(Vec<(JStr, J)>),
}

impl J {
    fn has_nul(&self) -> bool {
        let nul = |s: &JStr| s.contains(&Piece::C('\0'));
        match self {
            J::Str(s) => nul(s),
            J::Arr(a) => a.iter().any(J::has_nul),
            J::Obj(o) => o.iter().any(|(k, v)| nul(k) || v.has_nul()),
            _ => false,
        }
    }

    fn depth(&self) -> usize {
        match self {
            J::Arr(a) => 1 + a.iter().map(J::depth).max().unwrap_or(0),
            J::Obj(o) => 1 + o.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Valid JSON that serde_json cannot parse into a `Value` (its recursion limit is 128).
    fn is_exotic(&self) -> bool {
        fn walk(j: &J) -> bool {
            let lone = |s: &JStr| s.iter().any(|p| matches!(p, Piece::Lone(_)));
            match j {
                J::Num(n) => EXOTIC_NUMBERS.contains(n),
                J::Str(s) => lone(s),
                J::Arr(a) => a.iter().any(walk),
                J::Obj(o) => o.iter().any(|(k, v)| lone(k) || walk(v)),
                _ => false,
            }
        }
        self.depth() > 120 || walk(self)
    }
}

/// Writes JSON with randomly chosen (but always legal) escapes and whitespace, driven by a seed
/// so that a proptest case renders the same way every time.
struct Writer {
    state: u64,
}

impl Writer {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// SplitMix64.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn ws(&mut self, out: &mut String) {
        if self.chance(15) {
            const WS: [&str; 5] = [" ", "\n", "\t", "\r\n  ", "  "];
            out.push_str(WS[(self.next() % 5) as usize]);
        }
    }

    fn string(&mut self, s: &[Piece], out: &mut String) {
        out.push('"');
        for p in s {
            match *p {
                Piece::Lone(u) => {
                    let _ = write!(out, "\\u{u:04x}");
                }
                Piece::C(c) => self.char(c, out),
            }
        }
        out.push('"');
    }

    fn char(&mut self, c: char, out: &mut String) {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '/' if self.chance(30) => Some("\\/"),
            _ => None,
        };
        let must_escape = c < ' ' || c == '"' || c == '\\';
        if self.chance(if must_escape { 40 } else { 8 }) {
            // \uXXXX, as a surrogate pair above the BMP, in either case.
            let mut units = [0u16; 2];
            let upper = self.chance(50);
            for u in c.encode_utf16(&mut units) {
                if upper {
                    let _ = write!(out, "\\u{:04X}", *u);
                } else {
                    let _ = write!(out, "\\u{:04x}", *u);
                }
            }
        } else if let Some(e) = short {
            out.push_str(e);
        } else if c < ' ' {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }

    fn value(&mut self, j: &J, out: &mut String) {
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => self.string(s, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    self.value(item, out);
                    self.ws(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    self.string(k, out);
                    self.ws(out);
                    out.push(':');
                    self.ws(out);
                    self.value(v, out);
                    self.ws(out);
                }
                out.push('}');
            }
        }
    }

    fn render(&mut self, j: &J) -> String {
        let mut out = String::new();
        self.value(j, &mut out);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Candidate events.
// ---------------------------------------------------------------------------------------------

/// A string-typed field (`topic`, `event_id`, `timestamp`, `source`).
#[derive(Clone, Debug)]
enum Field {
    Missing,
    Str(String),
    /// Present with a JSON type other than string.
    Other(J),
}

/// A payload whose text is built byte-exact rather than rendered from a [`J`].
#[derive(Clone, Debug)]
struct RawObject {
    text: String,
    has_nul: bool,
}

#[derive(Clone, Debug)]
enum Payload {
    Missing,
    Val(J),
    Raw(RawObject),
    /// Not JSON at all, which makes the whole body not JSON.
    Corrupt(&'static str),
}

/// What surrounds the event object.
#[derive(Clone, Debug)]
enum Wrap {
    Object,
    /// Whitespace around the object (still a valid body).
    Padded(&'static str),
    InArray,
    Trailing(&'static str),
    /// The body is this JSON scalar instead.
    Scalar(&'static str),
    /// A UTF-8 byte-order mark before the object.
    Bom,
    /// An invalid UTF-8 byte inside an unknown member's string.
    BadUtf8,
}

#[derive(Clone, Debug)]
struct Candidate {
    fields: [Field; 4],
    payload: Payload,
    extras: Vec<(String, J)>,
    wrap: Wrap,
    limit: usize,
    seed: u64,
}

/// The JSON text of a candidate, and the text of its payload as sent.
struct Rendered {
    bytes: Vec<u8>,
    payload_text: Option<String>,
}

impl Candidate {
    fn render(&self) -> Rendered {
        let mut w = Writer::new(self.seed);
        let mut members: Vec<String> = Vec::new();
        let mut member = |w: &mut Writer, key: &str, value: String| {
            let mut m = String::new();
            w.string(&jstr(key), &mut m);
            w.ws(&mut m);
            m.push(':');
            w.ws(&mut m);
            m.push_str(&value);
            w.ws(&mut m);
            members.push(m);
        };
        for (name, f) in FIELDS.iter().zip(&self.fields) {
            match f {
                Field::Missing => {}
                Field::Str(s) => {
                    let v = w.render(&J::Str(jstr(s)));
                    member(&mut w, name, v);
                }
                Field::Other(j) => {
                    let v = w.render(j);
                    member(&mut w, name, v);
                }
            }
        }
        let payload_text = match &self.payload {
            Payload::Missing => None,
            Payload::Val(j) => Some(w.render(j)),
            Payload::Raw(r) => Some(r.text.clone()),
            Payload::Corrupt(t) => Some(t.to_string()),
        };
        if let Some(t) = &payload_text {
            member(&mut w, "payload", t.clone());
        }
        for (k, v) in &self.extras {
            let v = w.render(v);
            member(&mut w, k, v);
        }
        // Member order is irrelevant to the spec: shuffle (Fisher-Yates).
        for i in (1..members.len()).rev() {
            let j = (w.next() % (i as u64 + 1)) as usize;
            members.swap(i, j);
        }
        let mut body = String::from("{");
        w.ws(&mut body);
        body.push_str(&members.join(","));
        body.push('}');
        let mut bytes = match self.wrap {
            Wrap::Object => body,
            Wrap::Padded(p) => format!("{p}{body}{p}"),
            Wrap::InArray => format!("[{body}]"),
            Wrap::Trailing(t) => format!("{body}{t}"),
            Wrap::Scalar(s) => s.to_string(),
            Wrap::Bom => format!("\u{feff}{body}"),
            Wrap::BadUtf8 => body,
        }
        .into_bytes();
        if let Wrap::BadUtf8 = self.wrap {
            // `{"x":"?",` spliced in right after the opening brace; 0xff never occurs in UTF-8.
            let at = bytes.iter().position(|&b| b == b'{').unwrap_or(0) + 1;
            let junk: &[u8] = b"\"x\":\"\xff\",";
            bytes.splice(at..at, junk.iter().copied());
        }
        Rendered {
            bytes,
            payload_text,
        }
    }

    fn field_ok(&self, i: usize) -> bool {
        match &self.fields[i] {
            Field::Str(s) => match i {
                0 => spec::topic_ok(s),
                2 => spec::timestamp_ok(s) && s.chars().count() <= 64,
                _ => spec::text_ok(s),
            },
            _ => false,
        }
    }

    /// Is this field missing or of the wrong JSON type (as opposed to breaking its rule)?
    fn type_failure(&self, i: usize) -> bool {
        if i < 4 {
            !matches!(self.fields[i], Field::Str(_))
        } else {
            match &self.payload {
                Payload::Missing => true,
                Payload::Val(j) => !matches!(j, J::Obj(_)),
                _ => false,
            }
        }
    }

    fn exotic(&self) -> bool {
        self.payload_exotic()
            || self.extras.iter().any(|(_, v)| v.is_exotic())
            || self
                .fields
                .iter()
                .any(|f| matches!(f, Field::Other(j) if j.is_exotic()))
    }

    fn payload_exotic(&self) -> bool {
        matches!(&self.payload, Payload::Val(j) if j.is_exotic())
    }
}

/// THE ORACLE: `Ok(())` when the spec accepts the candidate, else the field it names.
fn oracle(c: &Candidate, r: &Rendered) -> Result<(), &'static str> {
    let body_is_json_object = matches!(c.wrap, Wrap::Object | Wrap::Padded(_))
        && !matches!(c.payload, Payload::Corrupt(_));
    if !body_is_json_object {
        return Err("body");
    }
    for (i, name) in FIELDS.iter().enumerate().take(4) {
        if !c.field_ok(i) {
            return Err(*name);
        }
    }
    let text = r.payload_text.as_deref().unwrap_or_default();
    let ok = match &c.payload {
        Payload::Missing | Payload::Corrupt(_) => false,
        // An object with no NUL anywhere in the text as sent (duplicate keys included), nested
        // at most 64 levels, whose numbers are finite f64 and strings valid Unicode.
        Payload::Val(j) => {
            matches!(j, J::Obj(_)) && !j.has_nul() && !j.is_exotic() && j.depth() <= 64
        }
        Payload::Raw(raw) => !raw.has_nul,
    };
    if ok && text.len() <= c.limit {
        Ok(())
    } else {
        Err("payload")
    }
}

/// Places where the crate and the spec part ways (each is shown by a `spec_divergence_*` test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Divergence {
    /// When any field is missing or mistyped, the crate checks every field's presence and type
    /// before any field's content, so an earlier field's bad content is not the one named.
    TypeChecksBeforeContent,
    /// When the typed decode fails, the crate re-parses the whole body into a
    /// `serde_json::Value`; valid JSON that serde_json cannot hold (out-of-range numbers, lone
    /// surrogates, nesting over 128) then becomes a `body` error instead of naming the field.
    ValueReparseBody,
    /// Bytes inside the string of an unknown member are skipped without UTF-8 validation, so a
    /// non-UTF-8 body is decoded (and possibly accepted) as if that member were absent.
    IgnoredMemberNotUtf8Checked,
}

impl Divergence {
    /// Whether the divergence can flip acceptance itself, not only the field named.
    fn flips_acceptance(self) -> bool {
        matches!(self, Divergence::IgnoredMemberNotUtf8Checked)
    }
}

fn divergence(c: &Candidate, _r: &Rendered, want: Result<(), &'static str>) -> Option<Divergence> {
    let slow_path = (0..4).any(|i| !matches!(c.fields[i], Field::Str(_)))
        || matches!(c.payload, Payload::Missing);
    if matches!(c.wrap, Wrap::BadUtf8) && !slow_path {
        return Some(Divergence::IgnoredMemberNotUtf8Checked);
    }
    match want {
        Ok(()) | Err("body") => None,
        Err("payload") if !slow_path => None,
        Err(field) => {
            let first = FIELDS.iter().position(|f| *f == field).unwrap_or(4);
            if slow_path && c.exotic() {
                Some(Divergence::ValueReparseBody)
            } else if slow_path && !c.type_failure(first) {
                Some(Divergence::TypeChecksBeforeContent)
            } else {
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

const TOKEN: &str = "[A-Za-z0-9_-]{1,12}";

/// A topic of exactly `n` chars from the allowed alphabet (dots never doubled, leading or
/// trailing), optionally with one char replaced by `odd`.
fn topic_of_len(n: usize, odd: Option<char>) -> String {
    let mut s: Vec<char> = (0..n)
        .map(|i| {
            if i % 9 == 8 && i + 1 < n {
                '.'
            } else {
                b"abcXYZ09_-"[i % 10] as char
            }
        })
        .collect();
    if let (Some(c), Some(last)) = (odd, s.last_mut()) {
        *last = c;
    }
    s.into_iter().collect()
}

fn valid_topic() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::collection::vec(TOKEN, 1..6).prop_map(|t| t.join(".")),
        1 => prop::sample::select(vec![1usize, 2, 254, 255]).prop_map(|n| topic_of_len(n, None)),
        1 => Just("telemetry.satellite.status".to_string()),
    ]
    .boxed()
}

fn mixed_topic() -> BoxedStrategy<String> {
    const BAD: &[&str] = &[
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "*",
        ">",
        "a.*",
        "a.>",
        "a.*.b",
        "a b",
        " a",
        "a ",
        "telemetry.é",
        "ünïcode",
        "a\tb",
        "a\u{0}b",
        "a/b",
        "a:b",
        "日本.語",
        "a.b.",
        "a.\u{2024}b",
    ];
    const INJECT: &[&str] = &[
        "*", ">", " ", ".", "..", "é", "\t", "\0", "\u{7f}", "\\", "\"",
    ];
    prop_oneof![
        4 => valid_topic(),
        2 => prop::sample::select(BAD).prop_map(String::from),
        2 => prop::sample::select(vec![254usize, 255, 256, 257, 300])
            .prop_map(|n| topic_of_len(n, None)),
        1 => prop::sample::select(vec![255usize, 256])
            .prop_map(|n| topic_of_len(n, Some('é'))),
        2 => (prop::collection::vec(TOKEN, 1..4), any::<prop::sample::Index>(), prop::sample::select(INJECT))
            .prop_map(|(t, at, inj)| {
                let s = t.join(".");
                let cut = at.index(s.len() + 1);
                format!("{}{}{}", &s[..cut], inj, &s[cut..])
            }),
        1 => "[a-z.]{0,12}",
        1 => ".{0,20}",
    ]
    .boxed()
}

/// `n` chars cycling through `alphabet`.
fn text_of_len(n: usize, alphabet: &str) -> String {
    alphabet.chars().cycle().take(n).collect()
}

const ALPHABETS: &[&str] = &["a", "é", "😀", "a日é😀", "x\u{a0}\u{2028}\u{feff}"];

fn valid_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[ -~]{1,40}",
        2 => "\\PC{1,30}",
        2 => "[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        1 => (prop::sample::select(vec![1usize, 2, 254, 255]), prop::sample::select(ALPHABETS))
            .prop_map(|(n, a)| text_of_len(n, a)),
        1 => Just("SAT-0001".to_string()),
    ]
    .boxed()
}

fn mixed_text() -> BoxedStrategy<String> {
    const CONTROLS: &[char] = &[
        '\0', '\n', '\t', '\r', '\u{1b}', '\u{1f}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}',
    ];
    // Neighbours of the control ranges, and other invisible characters, that are not Cc.
    const NEAR: &[&str] = &[
        " ", "~", "\u{a0}", "\u{ad}", "\u{200b}", "\u{2028}", "\u{feff}",
    ];
    prop_oneof![
        4 => valid_text(),
        1 => Just(String::new()),
        2 => (prop::sample::select(vec![255usize, 256, 257]), prop::sample::select(ALPHABETS))
            .prop_map(|(n, a)| text_of_len(n, a)),
        2 => ("[ -~]{0,20}", any::<prop::sample::Index>(), prop::sample::select(CONTROLS))
            .prop_map(|(s, at, c)| {
                let cut = at.index(s.len() + 1);
                format!("{}{}{}", &s[..cut], c, &s[cut..])
            }),
        1 => (prop::sample::select(CONTROLS), prop::bool::ANY).prop_map(|(c, end)| {
            let mut s = text_of_len(254, "é");
            if end { s.push(c) } else { s.insert(0, c) }
            s
        }),
        1 => prop::sample::select(NEAR).prop_map(String::from),
        1 => any::<String>(),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct TsParts {
    year: u32,
    month: u32,
    day: u32,
    sep: &'static str,
    hour: u32,
    minute: u32,
    second: u32,
    frac: Option<String>,
    offset: String,
}

impl TsParts {
    fn render(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}{}{:02}:{:02}:{:02}{}{}",
            self.year,
            self.month,
            self.day,
            self.sep,
            self.hour,
            self.minute,
            self.second,
            self.frac
                .as_ref()
                .map(|f| format!(".{f}"))
                .unwrap_or_default(),
            self.offset
        )
    }
}

fn year() -> BoxedStrategy<u32> {
    prop_oneof![4 => 1970u32..2100, 1 => 0u32..=9999, 1 => prop::sample::select(vec![0u32, 1900, 2000, 2024, 9999])]
        .boxed()
}

fn valid_timestamp() -> BoxedStrategy<String> {
    let offset = prop_oneof![
        3 => Just("Z".to_string()),
        1 => Just("z".to_string()),
        3 => (prop::sample::select(vec!["+", "-", "\u{2212}"]), 0u32..24, 0u32..60)
            .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
    ];
    (
        year(),
        1u32..=12,
        1u32..=31,
        prop::sample::select(vec!["T", "T", "T", "t", " "]),
        (0u32..24, 0u32..60, 0u32..=60),
        prop::option::of("[0-9]{1,12}"),
        offset,
    )
        .prop_map(
            |(year, month, day, sep, (hour, minute, second), frac, offset)| {
                // Clamp the day to the month so the result is always valid.
                let dim = spec::days_in_month(year, month);
                TsParts {
                    year,
                    month,
                    day: day.min(dim),
                    sep,
                    hour,
                    minute,
                    second,
                    frac,
                    offset,
                }
                .render()
            },
        )
        .boxed()
}

fn mixed_timestamp() -> BoxedStrategy<String> {
    const BAD: &[&str] = &[
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-11-23 10:30:45",
        "2026-11-23T10:30:45",
        "yesterday",
        "",
        "2026-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:60:00Z",
        "2026-11-23T10:30:61Z",
        "2026-11-23T23:59:60Z",
        "2026-11-23T10:30:45+24:00",
        "2026-11-23T10:30:45+23:59",
        "2026-11-23T10:30:45-00:00",
        "2026-11-23T10:30:45+05:60",
        "2026-11-23T10:30:45+0530",
        "2026-11-23T10:30:45+05:3",
        "2026-11-23T10:30:45+05",
        "2026-11-23T10:30:45UTC",
        "2026-11-23T10:30:45.Z",
        "2026-11-23T10:30:45,5Z",
        "2026-11-23T10:30:45.123456789123Z",
        " 2026-11-23T10:30:45Z",
        "2026-11-23T10:30:45Z ",
        "2026-11-23T10:30:45Zx",
        "26-11-23T10:30:45Z",
        "+2026-11-23T10:30:45Z",
        "2026-11-23",
        "2026-11-23T10:30Z",
        "2026-11-23_10:30:45Z",
        "2026-11-23T10:30:45+05:00[Europe/Paris]",
        "\u{ff12}\u{ff10}\u{ff12}\u{ff16}-11-23T10:30:45Z",
        "2026-11-23T10:30:45\u{0}Z",
        "2026-11-23T10:30:45\u{2212}05:00",
        "2026-11-23T10:30:45\u{2013}05:00",
    ];
    let parts = (
        year(),
        0u32..=13,
        0u32..=32,
        prop::sample::select(vec!["T", "t", " ", "_", "TT"]),
        (0u32..=25, 0u32..=61, 0u32..=61),
        prop::option::of("[0-9]{0,12}"),
        prop_oneof![
            Just("Z".to_string()),
            Just(String::new()),
            Just("+0500".to_string()),
            (
                prop::sample::select(vec!["+", "-", "\u{2212}", "~"]),
                0u32..=25,
                0u32..=61
            )
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        ],
    )
        .prop_map(
            |(year, month, day, sep, (hour, minute, second), frac, offset)| {
                TsParts {
                    year,
                    month,
                    day,
                    sep,
                    hour,
                    minute,
                    second,
                    frac,
                    offset,
                }
                .render()
            },
        );
    let mutated = (
        valid_timestamp(),
        any::<prop::sample::Index>(),
        prop::sample::select(vec![
            "", "0", "9", "-", ":", "T", " ", "Z", "+", ".", "x", "\u{2212}", "é", "00",
        ]),
        prop::bool::ANY,
    )
        .prop_map(|(ts, at, with, replace)| {
            let chars: Vec<char> = ts.chars().collect();
            let i = at.index(chars.len());
            let rest = if replace { i + 1 } else { i };
            let mut s: String = chars[..i].iter().collect();
            s.push_str(with);
            s.extend(&chars[rest..]);
            s
        });
    prop_oneof![
        4 => valid_timestamp(),
        2 => prop::sample::select(BAD).prop_map(String::from),
        2 => parts,
        2 => mutated,
        1 => ".{0,30}",
    ]
    .boxed()
}

fn json_string() -> BoxedStrategy<JStr> {
    prop_oneof![
        4 => "[a-z_]{0,8}".prop_map(|s| jstr(&s)),
        2 => "\\PC{0,8}".prop_map(|s| jstr(&s)),
        1 => prop::collection::vec(any::<char>(), 0..6).prop_map(|v| v.into_iter().map(Piece::C).collect()),
        1 => prop::sample::select(vec!["\\", "\"", "/", "\u{1f}", "\u{7f}", "😀", "\\u0000", "a\\u0000b"])
            .prop_map(jstr),
    ]
    .boxed()
}

/// A string that may hold a NUL.
fn json_string_maybe_nul() -> BoxedStrategy<JStr> {
    prop_oneof![
        12 => json_string(),
        1 => prop::sample::select(vec!["\0", "a\0b", "\0\0", "\\\0"]).prop_map(jstr),
    ]
    .boxed()
}

fn json_leaf(key: BoxedStrategy<JStr>) -> BoxedStrategy<J> {
    prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => prop::sample::select(NUMBERS.to_vec()).prop_map(J::Num),
        3 => key.prop_map(J::Str),
    ]
    .boxed()
}

fn json_value(strings: BoxedStrategy<JStr>) -> BoxedStrategy<J> {
    json_leaf(strings.clone())
        .prop_recursive(4, 24, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
                prop::collection::vec((strings.clone(), inner), 0..4).prop_map(J::Obj),
            ]
        })
        .boxed()
}

fn json_object(strings: BoxedStrategy<JStr>) -> BoxedStrategy<J> {
    prop::collection::vec((strings.clone(), json_value(strings)), 0..5)
        .prop_map(J::Obj)
        .boxed()
}

/// Valid JSON serde_json cannot hold in a `Value` (or nesting around 64 levels), optionally
/// next to an escaped backslash followed by `u0000` (which is not a NUL).
fn exotic_payload() -> BoxedStrategy<J> {
    let core = prop_oneof![
        prop::sample::select(EXOTIC_NUMBERS.to_vec()).prop_map(J::Num),
        (0xd800u16..=0xdfff).prop_map(|u| J::Str(vec![Piece::C('x'), Piece::Lone(u)])),
        (prop_oneof![60usize..=70, 129usize..=200], prop::bool::ANY).prop_map(|(depth, arrays)| {
            (0..depth).fold(J::Num("1"), |inner, _| {
                if arrays {
                    J::Arr(vec![inner])
                } else {
                    J::Obj(vec![(jstr("a"), inner)])
                }
            })
        }),
    ];
    (core, prop::bool::ANY)
        .prop_map(|(core, escaped_u0000)| {
            let mut members = vec![(jstr("k"), core)];
            if escaped_u0000 {
                members.push((jstr("note"), J::Str(jstr("\\u0000"))));
            }
            J::Obj(members)
        })
        .boxed()
}

/// An object of exactly `n` bytes (`n >= 2`), padded with pieces picked by `seed`; with
/// `canonical`, it is exactly what serde_json would write for the same value.
fn object_of_len(n: usize, seed: u64, canonical: bool) -> String {
    if n < 8 {
        // Too short for `{"k":""}`: pad with whitespace (never canonical, unless `{}`).
        return format!("{{{}}}", " ".repeat(n.saturating_sub(2)));
    }
    const CANONICAL: &[&str] = &["a", "é", "日", "😀", "\\n", "\\\\", "\\\"", "\\u001f"];
    const ANY: &[&str] = &["\\u00e9", "\\/", "\\\\u0000", "\\uD83D\\uDE00", "\\t"];
    let mut w = Writer::new(seed);
    let mut body = String::new();
    let mut left = n - 8;
    while left > 0 {
        let r = w.next() as usize;
        let piece = if canonical || !r.is_multiple_of(3) {
            CANONICAL[r % CANONICAL.len()]
        } else {
            ANY[r % ANY.len()]
        };
        let piece = if piece.len() <= left { piece } else { "a" };
        body.push_str(piece);
        left -= piece.len();
    }
    format!("{{\"k\":\"{body}\"}}")
}

fn limit() -> BoxedStrategy<usize> {
    prop_oneof![
        4 => Just(shared::event::DEFAULT_MAX_PAYLOAD_BYTES),
        1 => prop::sample::select(vec![0usize, 1, 2, 8, 16, 64]),
        2 => 2usize..=400,
    ]
    .boxed()
}

fn valid_payload(limit: usize) -> BoxedStrategy<Payload> {
    let sized =
        (limit.saturating_sub(40).max(2)..=limit.max(2), any::<u64>()).prop_map(|(n, seed)| {
            Payload::Raw(RawObject {
                text: object_of_len(n, seed, false),
                has_nul: false,
            })
        });
    prop_oneof![
        4 => json_object(json_string()).prop_map(Payload::Val),
        1 => Just(Payload::Val(J::Obj(vec![]))),
        1 => sized,
    ]
    .boxed()
}

fn mixed_payload(limit: usize) -> BoxedStrategy<Payload> {
    const CORRUPT: &[&str] = &[
        "{\"a\":}",
        "{'a':1}",
        "{\"a\":1,}",
        "{\"a\":01}",
        "{\"a\":NaN}",
        "{\"a\":\"\u{1}\"}",
        "{\"a\":\"\\x41\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\" 1}",
        "{",
        "}",
        "{\"a\":[1,2}",
        "{\"a\":-}",
        "{\"a\":.5}",
    ];
    let around_limit = (
        limit.saturating_sub(3).max(2)..=limit.saturating_add(3).max(2),
        any::<u64>(),
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(n, seed, canonical, nul)| {
            if nul && n >= 14 {
                // `{"k":"`, an escaped NUL, then the rest of a six-byte-shorter object.
                let inner = object_of_len(n - 6, seed, canonical);
                let text = format!("{}\\u0000{}", &inner[..6], &inner[6..]);
                Payload::Raw(RawObject {
                    text,
                    has_nul: true,
                })
            } else {
                let text = object_of_len(n, seed, canonical);
                Payload::Raw(RawObject {
                    text,
                    has_nul: false,
                })
            }
        });
    prop_oneof![
        6 => valid_payload(limit),
        3 => json_object(json_string_maybe_nul()).prop_map(Payload::Val),
        2 => json_value(json_string()).prop_map(Payload::Val),
        2 => around_limit,
        1 => exotic_payload().prop_map(Payload::Val),
        1 => hidden_nul_payload().prop_map(Payload::Val),
        1 => Just(Payload::Missing),
        1 => Just(Payload::Val(J::Null)),
        1 => prop::sample::select(CORRUPT).prop_map(Payload::Corrupt),
    ]
    .boxed()
}

/// An object whose NUL sits in a member that a later duplicate key overwrites.
fn hidden_nul_payload() -> BoxedStrategy<J> {
    (json_string(), json_object(json_string()), prop::bool::ANY)
        .prop_map(|(key, rest, nul_in_key)| {
            let mut members = match rest {
                J::Obj(m) => m,
                _ => Vec::new(),
            };
            let hidden = if nul_in_key {
                J::Obj(vec![(jstr("a\0"), J::Null)])
            } else {
                J::Str(jstr("\0"))
            };
            members.insert(0, (key.clone(), hidden));
            members.push((key, J::Bool(true)));
            J::Obj(members)
        })
        .boxed()
}

/// A value of a JSON type other than string.
fn wrong_type() -> BoxedStrategy<J> {
    prop_oneof![
        Just(J::Null),
        Just(J::Bool(true)),
        Just(J::Num("5")),
        Just(J::Num("1e999999")),
        Just(J::Arr(vec![])),
        Just(J::Arr(vec![J::Str(jstr("telemetry.a"))])),
        Just(J::Obj(vec![])),
    ]
    .boxed()
}

fn field(s: BoxedStrategy<String>) -> BoxedStrategy<Field> {
    prop_oneof![
        10 => s.prop_map(Field::Str),
        1 => Just(Field::Missing),
        1 => wrong_type().prop_map(Field::Other),
    ]
    .boxed()
}

fn extras() -> BoxedStrategy<Vec<(String, J)>> {
    // Never one of the five names: duplicate members are outside the spec.
    const NAMES: &[&str] = &[
        "extra", "Topic", "EVENT_ID", "payload_", "topic ", "", "ts", "\u{0}", "sourcé",
    ];
    let value = prop_oneof![
        8 => json_value(json_string_maybe_nul()),
        1 => exotic_payload(),
    ];
    prop::collection::vec(
        (prop::sample::select(NAMES).prop_map(String::from), value),
        0..3,
    )
    .boxed()
}

fn wrap() -> BoxedStrategy<Wrap> {
    prop_oneof![
        30 => Just(Wrap::Object),
        3 => prop::sample::select(vec![" ", "\n", "\r\n\t "]).prop_map(Wrap::Padded),
        1 => Just(Wrap::InArray),
        1 => prop::sample::select(vec!["x", "}", ",", "{}", "\u{0}"]).prop_map(Wrap::Trailing),
        1 => prop::sample::select(vec!["\"event\"", "42", "null", "true", "[]"]).prop_map(Wrap::Scalar),
        1 => Just(Wrap::Bom),
        1 => Just(Wrap::BadUtf8),
    ]
    .boxed()
}

/// Candidates: every field drawn valid, then a few of them (chosen by a mask) redrawn from the
/// mixed generators, so that accepted events, single faults and pile-ups all occur often.
fn candidate() -> BoxedStrategy<Candidate> {
    let mask = prop_oneof![
        3 => Just(0u8),
        4 => (0u8..6).prop_map(|i| 1 << i),
        3 => 0u8..64,
    ];
    (limit(), mask)
        .prop_flat_map(|(limit, mask)| {
            let pick = |bit: u8, valid: BoxedStrategy<Field>, mixed: BoxedStrategy<Field>| {
                if mask & (1 << bit) != 0 {
                    mixed
                } else {
                    valid
                }
            };
            let valid_field = |s: BoxedStrategy<String>| s.prop_map(Field::Str).boxed();
            let fields = (
                pick(0, valid_field(valid_topic()), field(mixed_topic())),
                pick(1, valid_field(valid_text()), field(mixed_text())),
                pick(2, valid_field(valid_timestamp()), field(mixed_timestamp())),
                pick(3, valid_field(valid_text()), field(mixed_text())),
            );
            let payload = if mask & 16 != 0 {
                mixed_payload(limit)
            } else {
                valid_payload(limit)
            };
            let wrap = if mask & 32 != 0 {
                wrap()
            } else {
                Just(Wrap::Object).boxed()
            };
            (Just(limit), fields, payload, extras(), wrap, any::<u64>())
        })
        .prop_map(
            |(limit, (t, i, ts, s), payload, extras, wrap, seed)| Candidate {
                fields: [t, i, ts, s],
                payload,
                extras,
                wrap,
                limit,
                seed,
            },
        )
        .boxed()
}

/// Spec-valid candidates with payloads serde_json can hold.
fn valid_candidate() -> BoxedStrategy<Candidate> {
    let limits = Limits::default().max_payload_bytes;
    (
        (valid_topic(), valid_text(), valid_timestamp(), valid_text()),
        valid_payload(limits),
        extras(),
        any::<u64>(),
    )
        .prop_map(move |((t, i, ts, s), payload, extras, seed)| Candidate {
            fields: [Field::Str(t), Field::Str(i), Field::Str(ts), Field::Str(s)],
            payload,
            extras: extras.into_iter().filter(|(_, v)| !v.is_exotic()).collect(),
            wrap: Wrap::Object,
            limit: limits,
            seed,
        })
        .prop_filter("spec-valid", |c| oracle(c, &c.render()).is_ok())
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the properties.
// ---------------------------------------------------------------------------------------------

fn limits(max_payload_bytes: usize) -> Limits {
    Limits { max_payload_bytes }
}

/// Whatever the crate accepts must satisfy every rule of the spec.
fn check_accepted(e: &Event, l: &Limits) -> Result<(), TestCaseError> {
    prop_assert!(spec::topic_ok(e.topic()), "accepted topic {:?}", e.topic());
    prop_assert!(
        spec::text_ok(e.event_id()),
        "accepted event_id {:?}",
        e.event_id()
    );
    prop_assert!(
        spec::text_ok(e.source()),
        "accepted source {:?}",
        e.source()
    );
    let payload = e.payload_json();
    prop_assert!(payload.starts_with('{'), "accepted payload {payload:?}");
    prop_assert!(payload.len() <= l.max_payload_bytes);
    // NUL: only checkable when serde_json can hold the payload.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) {
        prop_assert!(v.is_object());
        prop_assert!(!value_has_nul(&v), "accepted payload with NUL {payload:?}");
    }
    // Anything accepted is re-accepted, unchanged, from its own wire form.
    let again = Event::from_json(&e.to_json(), l);
    prop_assert_eq!(again.as_ref(), Ok(e));
    Ok(())
}

fn value_has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(value_has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || value_has_nul(v)),
        _ => false,
    }
}

/// Runs every decoding entry point on `bytes`; a panic anywhere fails the test.
fn exercise(bytes: &[u8], l: &Limits) -> Result<Option<&'static str>, TestCaseError> {
    let got = Event::from_json(bytes, l);
    if let Ok(e) = &got {
        check_accepted(e, l)?;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = Event::from_value(&v, l);
    }
    let _ = serde_json::from_slice::<Event>(bytes);
    Ok(got.err().map(|e| e.field))
}

// ---------------------------------------------------------------------------------------------
// 1. No input makes decoding panic.
// ---------------------------------------------------------------------------------------------

fn jsonish_bytes() -> BoxedStrategy<Vec<u8>> {
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b" ",
        b"\"topic\"",
        b"\"event_id\"",
        b"\"timestamp\"",
        b"\"source\"",
        b"\"payload\"",
        b"\"a.b\"",
        b"\"2026-11-23T10:30:45Z\"",
        b"\"\"",
        b"\"",
        b"\\",
        b"\"\\u0000\"",
        b"\"\\\\u0000\"",
        b"\"\\ud800\"",
        b"\"\\udc00\\ud800\"",
        b"\"\\ud83d\\ude00\"",
        b"\"\\u12\"",
        b"\"\x01\x1f\x7f\"",
        b"\"\xff\xfe\"",
        b"\"\xc3\"",
        b"\"\xed\xa0\x80\"",
        b"\"\xc0\x80\"",
        b"\"\xf4\x90\x80\x80\"",
        b"\xef\xbb\xbf",
        b"1e999999",
        b"-1e999999",
        b"1e-999999",
        b"123456789012345678901234567890",
        b"-0",
        b"0.",
        b"01",
        b"NaN",
        b"Infinity",
        b"true",
        b"null",
        b"\0",
        b"\n",
    ];
    prop::collection::vec(prop::sample::select(TOKENS), 0..48)
        .prop_map(|t| t.concat())
        .boxed()
}

/// Nesting up to depth 200, in the payload, in an unknown member, or as the whole body.
fn deep_bytes() -> BoxedStrategy<Vec<u8>> {
    (
        1usize..=200,
        prop::bool::ANY,
        0u8..3,
        prop::bool::ANY,
        prop::sample::select(vec!["1", "1e999999", "\"\\ud800\"", "\"\\u0000\""]),
    )
        .prop_map(|(depth, arrays, place, closed, leaf)| {
            let (open, close) = if arrays {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            let mut nest = open.repeat(depth);
            nest.push_str(leaf);
            if closed {
                nest.push_str(&close.repeat(depth));
            }
            let event = |payload: &str, extra: &str| {
                format!(
                    r#"{{"topic":"a.b","event_id":"e","timestamp":"2026-11-23T10:30:45Z","source":"s","payload":{payload}{extra}}}"#
                )
            };
            match place {
                0 => event(&format!("{{\"x\":{nest}}}"), ""),
                1 => event("{}", &format!(",\"x\":{nest}")),
                _ => nest,
            }
            .into_bytes()
        })
        .boxed()
}

fn arbitrary_input() -> BoxedStrategy<Vec<u8>> {
    let valid_bytes = valid_candidate().prop_map(|c| c.render().bytes);
    let truncated = (valid_bytes.clone(), any::<prop::sample::Index>()).prop_map(|(b, at)| {
        let cut = at.index(b.len() + 1);
        b[..cut].to_vec()
    });
    let spliced = (valid_bytes, any::<prop::sample::Index>(), jsonish_bytes()).prop_map(
        |(mut b, at, junk)| {
            let at = at.index(b.len() + 1);
            b.splice(at..at, junk);
            b
        },
    );
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..300),
        3 => jsonish_bytes(),
        2 => (jsonish_bytes(), jsonish_bytes()).prop_map(|(a, b)| [&b"{\"topic\":"[..], &a, b"\"payload\":", &b].concat()),
        3 => truncated,
        2 => spliced,
        2 => deep_bytes(),
        2 => candidate().prop_map(|c| c.render().bytes),
    ]
    .boxed()
}

#[test]
fn from_json_never_panics_on_arbitrary_bytes() {
    const CASES: u32 = 2_000;
    let config = config(CASES);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let rejected: RefCell<BTreeMap<&str, usize>> = RefCell::default();
    runner
        .run(
            &(
                arbitrary_input(),
                prop::sample::select(vec![0usize, 16, 65536]),
            ),
            |(bytes, max)| {
                let field = exercise(&bytes, &limits(max))?.unwrap_or("(accepted)");
                *rejected.borrow_mut().entry(field).or_default() += 1;
                Ok(())
            },
        )
        .unwrap();
    eprintln!(
        "from_json_never_panics_on_arbitrary_bytes: {cases} cases, outcomes {:?}",
        rejected.borrow()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The crate accepts exactly the events the spec accepts, and names the same field.
// ---------------------------------------------------------------------------------------------

#[test]
fn accepts_exactly_the_valid_set() {
    const CASES: u32 = 3_000;
    let strict = strict();
    let config = config(CASES);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let outcomes: RefCell<BTreeMap<String, usize>> = RefCell::default();
    let skipped: RefCell<BTreeMap<Divergence, usize>> = RefCell::default();
    runner
        .run(&candidate(), |c| {
            let r = c.render();
            let l = limits(c.limit);
            let want = oracle(&c, &r);
            let got = Event::from_json(&r.bytes, &l);
            let known = if strict {
                None
            } else {
                divergence(&c, &r, want)
            };
            *outcomes
                .borrow_mut()
                .entry(match want {
                    Ok(()) => "ok".to_string(),
                    Err(f) => format!("err:{f}"),
                })
                .or_default() += 1;
            if let Some(d) = known {
                *skipped.borrow_mut().entry(d).or_default() += 1;
            }
            let body = String::from_utf8_lossy(&r.bytes);
            if !known.is_some_and(Divergence::flips_acceptance) {
                prop_assert_eq!(
                    got.is_ok(),
                    want.is_ok(),
                    "oracle {:?}, crate {:?}, body {}",
                    want,
                    got,
                    body
                );
            }
            match (&got, want) {
                (Ok(e), Ok(())) => {
                    check_accepted(e, &l)?;
                    prop_assert_eq!(
                        Some(e.payload_json()),
                        r.payload_text.as_deref(),
                        "payload kept as sent"
                    );
                }
                (Err(e), Err(field)) if known.is_none() => {
                    prop_assert_eq!(e.field, field, "crate said {:?}; body {}", e, body);
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "accepts_exactly_the_valid_set: {cases} cases, oracle outcomes {:?}, \
         field check skipped for known divergences {:?}",
        outcomes.borrow(),
        skipped.borrow()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Valid events round-trip, and the Value path agrees with the bytes path.
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_events_round_trip() {
    const CASES: u32 = 1_000;
    let config = config(CASES);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let payload_text_differs = RefCell::new(0usize);
    runner
        .run(&valid_candidate(), |c| {
            let r = c.render();
            let l = limits(c.limit);
            let e = Event::from_json(&r.bytes, &l)
                .map_err(|err| TestCaseError::fail(format!("{err}: {:?}", r.bytes)))?;
            // The accessors give back what was sent (decoded), the payload byte for byte.
            let sent: Vec<&str> = c
                .fields
                .iter()
                .map(|f| match f {
                    Field::Str(s) => s.as_str(),
                    _ => "",
                })
                .collect();
            prop_assert_eq!(
                [e.topic(), e.event_id(), e.source()],
                [sent[0], sent[1], sent[3]]
            );
            prop_assert_eq!(Some(e.payload_json()), r.payload_text.as_deref());
            let instant = chrono::DateTime::parse_from_rfc3339(sent[2])
                .map(|t| t.with_timezone(&chrono::Utc));
            prop_assert_eq!(Ok(e.timestamp()), instant);

            // Wire form round trip, and its stability.
            let wire = e.to_json();
            let again = Event::from_json(&wire, &l);
            prop_assert_eq!(again.as_ref(), Ok(&e));
            prop_assert_eq!(again.map(|a| a.to_json()).ok(), Some(wire.clone()));
            prop_assert_eq!(serde_json::to_vec(&e).ok(), Some(wire.clone()));
            let deserialized = serde_json::from_slice::<Event>(&r.bytes).ok();
            prop_assert_eq!(deserialized.as_ref(), Some(&e));

            // The Value path (the HTTP API) agrees with the bytes path.
            let value: serde_json::Value = serde_json::from_slice(&r.bytes)
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            let ev = Event::from_value(&value, &l);
            let ev = match ev {
                Ok(ev) => ev,
                Err(err) => {
                    return Err(TestCaseError::fail(format!("from_value: {err} on {value}")))
                }
            };
            prop_assert_eq!(
                [ev.topic(), ev.event_id(), ev.source()],
                [e.topic(), e.event_id(), e.source()]
            );
            prop_assert_eq!(ev.timestamp(), e.timestamp());
            let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
            prop_assert_eq!(parse(ev.payload_json()), parse(e.payload_json()));
            if ev.payload_json() != e.payload_json() {
                // Expected: from_value re-serializes the payload (see
                // spec_divergence_from_value_does_not_measure_payload_as_sent).
                *payload_text_differs.borrow_mut() += 1;
                prop_assert!(!strict(), "payload text differs: {ev:?} vs {e:?}");
            } else {
                prop_assert_eq!(&ev, &e);
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "valid_events_round_trip: {cases} cases; from_value re-wrote the payload text in {}",
        payload_text_differs.borrow()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The payload limit is inclusive, byte-exact, and measured on the text as sent.
// ---------------------------------------------------------------------------------------------

fn event_with_payload(payload: &str) -> Vec<u8> {
    format!(
        r#"{{"topic":"t.limit","event_id":"e-1","timestamp":"2026-11-23T10:30:45.123Z","source":"s","payload":{payload}}}"#
    )
    .into_bytes()
}

#[test]
fn payload_limit_boundary() {
    const CASES: u32 = 400;
    let config = config(CASES);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let sizes = prop_oneof![
        3 => 2usize..=64,
        3 => 64usize..=5_000,
        1 => prop::sample::select(vec![65_535usize, 65_536, 65_537]),
    ];
    runner
        .run(
            &(sizes, any::<u64>(), prop::bool::ANY),
            |(limit, seed, canonical)| {
                let l = limits(limit);
                let at = object_of_len(limit, seed, canonical);
                let over = object_of_len(limit + 1, seed, canonical);
                prop_assert_eq!((at.len(), over.len()), (limit, limit + 1));
                let ok = Event::from_json(&event_with_payload(&at), &l);
                prop_assert!(
                    ok.is_ok(),
                    "{} bytes at limit {}: {:?}",
                    at.len(),
                    limit,
                    ok
                );
                let err = Event::from_json(&event_with_payload(&over), &l);
                prop_assert_eq!(err.map_err(|e| e.field), Err("payload"));
                // Where the text is exactly what serde_json would write, the Value path
                // measures the same bytes and must agree.
                let value_path = |bytes: Vec<u8>| {
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .map(|v| Event::from_value(&v, &l).map_err(|e| e.field))
                        .ok()
                };
                let is_canonical = |t: &str| {
                    serde_json::from_str::<serde_json::Value>(t)
                        .ok()
                        .and_then(|v| serde_json::to_string(&v).ok())
                        .as_deref()
                        == Some(t)
                };
                if is_canonical(&at) {
                    prop_assert!(matches!(value_path(event_with_payload(&at)), Some(Ok(_))));
                }
                if is_canonical(&over) {
                    prop_assert_eq!(
                        value_path(event_with_payload(&over)).map(|r| r.err()),
                        Some(Some("payload"))
                    );
                }
                Ok(())
            },
        )
        .unwrap();
    eprintln!("payload_limit_boundary: {cases} cases (two payloads each)");
}

// ---------------------------------------------------------------------------------------------
// The oracle's own building blocks, checked against the references the spec names.
// ---------------------------------------------------------------------------------------------

#[test]
fn control_char_rule_matches_char_is_control() {
    for c in (0..=0x10ffff).filter_map(char::from_u32) {
        assert_eq!(spec::is_cc(c), c.is_control(), "{c:?}");
    }
}

#[test]
fn timestamp_rule_matches_chrono() {
    const CASES: u32 = 4_000;
    let config = config(CASES);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let valid = RefCell::new(0usize);
    runner
        .run(&mixed_timestamp(), |ts| {
            let chrono_ok = chrono::DateTime::parse_from_rfc3339(&ts).is_ok();
            prop_assert_eq!(spec::timestamp_ok(&ts), chrono_ok, "{:?}", ts);
            *valid.borrow_mut() += usize::from(chrono_ok);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "timestamp_rule_matches_chrono: {cases} cases, {} of them valid",
        valid.borrow()
    );
}

// ---------------------------------------------------------------------------------------------
// A fixed, seeded mutation loop ("fuzz-ish"): no input may panic.
// ---------------------------------------------------------------------------------------------

#[test]
fn mutated_events_never_panic() {
    const ITERATIONS: usize = 200_000;
    let mut seeds: Vec<Vec<u8>> = vec![
        event_with_payload(r#"{"battery_charge_percent":85.5,"is_anomaly":false}"#),
        br#"{"topic":"telemetry.satellite.status","event_id":"0190f0c2-7c4e-7d1a-9b1e-3f2a1c0d9e8f","timestamp":"2026-11-23T10:30:45.123+05:30","source":"SAT-0001","payload":{"a":[1,2,{"b":null}],"s":"\u00e9\ud83d\ude00\\u0000"}}"#.to_vec(),
        " {\n \"payload\" : { } , \"source\":\"é😀\", \"timestamp\":\"2026-11-23t10:30:60z\",\"event_id\":\"\\u0041\",\"topic\":\"a-b._c\", \"extra\": [1e5, \"x\"] }\n".as_bytes().to_vec(),
        event_with_payload(r#"{"n":123456789012345678901234567890,"f":-1.5e-300}"#),
        event_with_payload(&object_of_len(200, 1, false)),
    ];
    // A few generated ones, from a fixed seed, for variety.
    let mut runner = TestRunner::new_with_rng(
        config(1),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]),
    );
    let strategy = valid_candidate();
    while seeds.len() < 25 {
        if let Ok(tree) = strategy.new_tree(&mut runner) {
            let bytes = tree.current().render().bytes;
            if bytes.len() <= 1024 {
                seeds.push(bytes);
            }
        }
    }
    const SPLICE: &[&[u8]] = &[
        b"\\u0000",
        b"\\ud800",
        b"1e999999",
        b"\xff",
        b"\xc3",
        b"\"",
        b"\\",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"null",
        b".",
        b"*",
        b"\x00",
        b"\x7f",
        b"\xc2\x85",
    ];
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let start = Instant::now();
    for n in 0..ITERATIONS {
        let mut b = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=4) {
            let at = rng.random_range(0..=b.len());
            match rng.random_range(0..5) {
                0 if at < b.len() => b[at] ^= 1 << rng.random_range(0..8),
                1 if at < b.len() => b[at] = rng.random(),
                2 if at < b.len() => {
                    b.remove(at);
                }
                3 => {
                    let s = SPLICE[rng.random_range(0..SPLICE.len())];
                    b.splice(at..at, s.iter().copied());
                }
                _ => b.insert(at, rng.random()),
            }
        }
        let l = limits(if n % 4 == 0 { 64 } else { 65_536 });
        let field = match Event::from_json(&b, &l) {
            Ok(e) => {
                check_accepted(&e, &l)
                    .unwrap_or_else(|e| panic!("{e} on input {:?}", String::from_utf8_lossy(&b)));
                "(accepted)"
            }
            Err(e) => e.field,
        };
        *outcomes.entry(field).or_default() += 1;
    }
    let accepted = outcomes.get("(accepted)").copied().unwrap_or(0);
    eprintln!(
        "mutated_events_never_panic: {ITERATIONS} inputs from {} seeds, {accepted} accepted, {} \
         rejected ({outcomes:?}), {:.2?}",
        seeds.len(),
        ITERATIONS - accepted,
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Known disagreements between the crate and the spec. Each asserts the spec; each fails today.
// ---------------------------------------------------------------------------------------------

fn field_of(bytes: &[u8], l: &Limits) -> Result<(), &'static str> {
    Event::from_json(bytes, l).map(|_| ()).map_err(|e| e.field)
}

#[test]
#[ignore = "crate disagrees with the spec: presence/type of all fields is checked before content"]
fn spec_divergence_error_names_first_failing_field() {
    let l = Limits::default();
    // topic is bad ("a..b") and comes first, but event_id (missing) is named.
    let missing_later =
        br#"{"topic":"a..b","timestamp":"2026-11-23T10:30:45Z","source":"s","payload":{}}"#;
    assert_eq!(field_of(missing_later, &l), Err("topic"));
    // topic is bad, payload missing: "payload" is named.
    let no_payload =
        br#"{"topic":"","event_id":"x","timestamp":"2026-11-23T10:30:45Z","source":"s"}"#;
    assert_eq!(field_of(no_payload, &l), Err("topic"));
}

#[test]
fn payload_validity_does_not_depend_on_u0000_text() {
    // Numbers that are not finite f64 and lone surrogates are rejected (Postgres jsonb cannot
    // store them), whether or not the text also holds an escaped backslash + "u0000".
    let l = Limits::default();
    let mut wrong = Vec::new();
    for odd in [r#""big":1e999999"#, r#""s":"\ud800""#] {
        let without = event_with_payload(&format!("{{{odd}}}"));
        // An escaped backslash followed by u0000 is not a NUL.
        let with = event_with_payload(&format!(r#"{{{odd},"note":"\\u0000"}}"#));
        let (a, b) = (field_of(&without, &l), field_of(&with, &l));
        if (a, b) != (Err("payload"), Err("payload")) {
            wrong.push(format!("{:.40}: alone {a:?}, next to \\\\u0000 {b:?}", odd));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
#[ignore = "crate disagrees with the spec: grammatical JSON serde_json cannot hold turns a field error into a body error"]
fn spec_divergence_missing_field_named_despite_unrepresentable_json() {
    let l = Limits::default();
    let body = br#"{"topic":"a.b","event_id":"x","timestamp":"2026-11-23T10:30:45Z","payload":{"n":1e999999}}"#;
    assert_eq!(field_of(body, &l), Err("source"));
}

#[test]
#[ignore = "crate disagrees with the spec: a non-UTF-8 body is accepted when the bad bytes sit in an unknown member"]
fn spec_divergence_non_utf8_body_is_a_body_error() {
    let mut body = event_with_payload("{}");
    let at = body.len() - 1;
    body.splice(at..at, b",\"note\":\"\xff\"".iter().copied());
    assert!(std::str::from_utf8(&body).is_err());
    assert_eq!(field_of(&body, &Limits::default()), Err("body"));
}

#[test]
fn nul_hidden_by_duplicate_key_is_rejected() {
    let l = Limits::default();
    let wrong: Vec<String> = [
        r#"{"a":"\u0000","a":1}"#,
        r#"{"a":{"\u0000":null},"a":1}"#,
        r#"{"x":[{"k":"\u0000","k":""}]}"#,
    ]
    .iter()
    .filter_map(|payload| {
        let got = field_of(&event_with_payload(payload), &l);
        (got != Err("payload")).then(|| format!("{payload}: {got:?}"))
    })
    .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
#[ignore = "crate disagrees with the spec: from_value (HTTP) measures and stores the re-serialized payload"]
fn spec_divergence_from_value_does_not_measure_payload_as_sent() {
    let via_json = |payload: &str, max: usize| {
        Event::from_json(&event_with_payload(payload), &limits(max))
            .map(|e| e.payload_json().to_string())
            .map_err(|e| e.field)
    };
    let via_value = |payload: &str, max: usize| {
        let v: serde_json::Value = serde_json::from_slice(&event_with_payload(payload)).unwrap();
        Event::from_value(&v, &limits(max))
            .map(|e| e.payload_json().to_string())
            .map_err(|e| e.field)
    };
    let cases = [
        // 9 bytes as sent, 14 once re-serialized ("100000.0"): within a limit of 9.
        (r#"{"a":1e5}"#, 9),
        // 13 bytes as sent, 7 once re-serialized: over a limit of 7.
        (r#"{ "a" : 1   }"#, 7),
        // Integers past 2^53 come back as a rounded float.
        (r#"{"n":123456789012345678901234567890}"#, 1024),
        // Keys come back sorted.
        (r#"{"b":1,"a":2}"#, 1024),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|&(payload, max)| {
            let (a, b) = (via_json(payload, max), via_value(payload, max));
            (a != b).then(|| format!("{payload} (limit {max}): from_json {a:?}, from_value {b:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

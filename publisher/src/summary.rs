//! What a run did ([`Summary`]), as the JSON object of `--summary json` (the contract other
//! programs read) or an aligned table for people.

use serde::Serialize;

/// What a run did. The first six fields are the `--summary json` object, in that order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sends accepted by the target (PubAck, or 2xx over HTTP).
    pub published: u64,
    /// Accepted sends that were new events.
    pub unique: u64,
    /// Accepted sends that were intentional duplicates.
    pub duplicates: u64,
    /// Sends given up on, including those never attempted because the run stopped early.
    pub failed: u64,
    /// Seconds from the first send to the last answer.
    pub elapsed_s: f64,
    /// `published / elapsed_s`.
    pub events_per_s: f64,
    /// The seed of the run's shape (given, or drawn when `--seed` was absent).
    #[serde(skip)]
    pub seed: u64,
    /// Sends planned (`--count`).
    #[serde(skip)]
    pub count: u64,
    /// JetStream publishes attempted again after a failed attempt; `None` with `--via http`.
    #[serde(skip)]
    pub retries: Option<u64>,
    /// This run's id, the prefix of every `Nats-Msg-Id`.
    #[serde(skip)]
    pub run_id: String,
    /// Why the run stopped before sending everything, if it did.
    #[serde(skip)]
    pub aborted: Option<String>,
}

impl Summary {
    /// The `--summary json` object, on one line.
    pub fn to_json(&self) -> String {
        // A struct of numbers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `--summary text` table: a line naming the run, then one row per figure.
    ///
    /// ```text
    /// run 0197a3c4-5b1e-7c2d-9f00-123456789abc, seed 42, 20,000 planned
    /// metric          value
    /// -----------  --------
    /// published      20,000
    /// unique         14,000
    /// duplicates      6,000
    /// failed              0
    /// retries             3
    /// elapsed (s)     1.234
    /// events/s     16,207.5
    /// ```
    ///
    /// `retries` (JetStream publishes attempted again) appears only for `--via nats`.
    pub fn to_text(&self) -> String {
        let mut rows: Vec<[String; 2]> = vec![
            ["published".into(), group_thousands(self.published)],
            ["unique".into(), group_thousands(self.unique)],
            ["duplicates".into(), group_thousands(self.duplicates)],
            ["failed".into(), group_thousands(self.failed)],
        ];
        if let Some(retries) = self.retries {
            rows.push(["retries".into(), group_thousands(retries)]);
        }
        rows.push(["elapsed (s)".into(), format!("{:.3}", self.elapsed_s)]);
        rows.push(["events/s".into(), format_rate(self.events_per_s)]);
        format!(
            "run {}, seed {}, {} planned\n{}",
            self.run_id,
            self.seed,
            group_thousands(self.count),
            render_table(["metric", "value"], &rows)
        )
    }

    /// True when every planned send was accepted.
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.aborted.is_none() && self.published == self.count
    }
}

/// A two-column table: labels left-aligned, values right-aligned, a header and a rule under
/// it; no trailing spaces.
fn render_table(header: [&str; 2], rows: &[[String; 2]]) -> String {
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .chain(std::iter::once(header[col].chars().count()))
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    let mut out = format!("{:<w0$}  {:>w1$}\n", header[0], header[1]);
    out.push_str(&format!("{}  {}", "-".repeat(w0), "-".repeat(w1)));
    for [label, value] in rows {
        out.push_str(&format!("\n{label:<w0$}  {value:>w1$}"));
    }
    out
}

/// `20000` as `20,000`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with one decimal and grouped thousands: `16207.53` as `16,207.5`.
fn format_rate(rate: f64) -> String {
    if !rate.is_finite() || rate < 0.0 {
        return format!("{rate:.1}");
    }
    let tenths = (rate * 10.0).round() as u64;
    format!("{}.{}", group_thousands(tenths / 10), tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_summary_has_exactly_the_contract_fields() {
        let s = Summary {
            published: 10,
            unique: 7,
            duplicates: 3,
            failed: 0,
            elapsed_s: 0.5,
            events_per_s: 20.0,
            seed: 1,
            count: 10,
            retries: Some(2),
            run_id: "r".into(),
            aborted: None,
        };
        assert_eq!(
            s.to_json(),
            r#"{"published":10,"unique":7,"duplicates":3,"failed":0,"elapsed_s":0.5,"events_per_s":20.0}"#
        );
        assert!(s.is_success());
        assert!(s.to_text().contains("duplicates"));
    }

    fn sample_summary() -> Summary {
        Summary {
            published: 20_000,
            unique: 14_000,
            duplicates: 6_000,
            failed: 0,
            elapsed_s: 1.234,
            events_per_s: 16_207.5,
            seed: 42,
            count: 20_000,
            retries: Some(3),
            run_id: "0197a3c4-5b1e-7c2d-9f00-123456789abc".into(),
            aborted: None,
        }
    }

    #[test]
    fn text_summary_is_an_aligned_table() {
        let text = sample_summary().to_text();
        assert_eq!(
            text,
            "run 0197a3c4-5b1e-7c2d-9f00-123456789abc, seed 42, 20,000 planned\n\
             metric          value\n\
             -----------  --------\n\
             published      20,000\n\
             unique         14,000\n\
             duplicates      6,000\n\
             failed              0\n\
             retries             3\n\
             elapsed (s)     1.234\n\
             events/s     16,207.5"
        );
        // Every row of the table ends in the same column, and none has trailing spaces.
        let table: Vec<&str> = text.lines().skip(1).collect();
        let width = table[0].len();
        assert!(table.iter().all(|l| l.len() == width), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn text_summary_shows_retries_only_for_nats() {
        let http = Summary {
            retries: None,
            ..sample_summary()
        };
        assert!(!http.to_text().contains("retries"));
        assert!(sample_summary().to_text().contains("\nretries "));
        // The JSON object is the contract either way: retries is never in it.
        assert_eq!(http.to_json(), sample_summary().to_json());
        assert!(!http.to_json().contains("retries"));
    }

    #[test]
    fn table_columns_grow_with_their_widest_cell() {
        let rows = [
            ["a".to_owned(), "1".to_owned()],
            ["a much longer label".to_owned(), "123,456,789".to_owned()],
        ];
        let t = render_table(["metric", "value"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "metric                     value");
        assert_eq!(lines[1], "-------------------  -----------");
        assert_eq!(lines[2], "a                              1");
        assert_eq!(lines[3], "a much longer label  123,456,789");
        assert_eq!(
            render_table(["metric", "value"], &[]),
            "metric  value\n------  -----"
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(20_000), "20,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(format_rate(0.0), "0.0");
        assert_eq!(format_rate(3.25), "3.3");
        assert_eq!(format_rate(16_207.53), "16,207.5");
        assert_eq!(format_rate(999.96), "1,000.0");
    }
}

//! The standard process metrics of Prometheus client libraries, read from `/proc/self` at
//! scrape time: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_start_time_seconds`.
//!
//! They are rendered as text here rather than recorded through `metrics`: its counters hold
//! integers, and CPU seconds need fractions. Linux only; a metric whose source cannot be read
//! (another OS, a restricted `/proc`) is left out of the scrape rather than reported wrong.

use std::fmt::Write;

/// The process metrics in Prometheus text format (`# HELP`, `# TYPE`, one sample each).
pub fn render() -> String {
    let mut out = String::new();
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| Stat::parse(&s));
    let ticks = clock_ticks();
    if let (Some(stat), Some(ticks)) = (&stat, ticks) {
        let cpu = (stat.utime + stat.stime) as f64 / ticks;
        sample(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some(rss) = resident_bytes() {
        sample(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss as f64,
        );
    }
    if let Some(fds) = open_fds() {
        sample(
            &mut out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    if let (Some(stat), Some(ticks), Some(boot)) = (&stat, ticks, boot) {
        sample(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot as f64 + stat.starttime as f64 / ticks,
        );
    }
    out
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}

/// The fields of `/proc/self/stat` used here, in clock ticks.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

impl Stat {
    /// Fields 14, 15 and 22 (1-based, `proc(5)`). The second field, the command name, is in
    /// parentheses and may itself contain spaces and parentheses: fields are counted from
    /// the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let after = &text[text.rfind(')')? + 1..];
        // `after` starts at field 3 (state).
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
        })
    }
}

/// The `btime` line of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

/// Resident pages (second field of `/proc/self/statm`) times the page size.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

fn open_fds() -> Option<usize> {
    // The directory handle read_dir holds is one of the entries; it is not one of ours
    // otherwise, so it is not counted.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (odd) name)) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 17 18 333 \
                    20 21";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 111,
                stime: 222,
                starttime: 333
            })
        );
        assert_eq!(Stat::parse("no parenthesis"), None);
        assert_eq!(Stat::parse("1 (short) S 1 2"), None);
    }

    #[test]
    fn boot_time_is_the_btime_line() {
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\nprocesses 5\n"),
            Some(1700000000)
        );
        assert_eq!(boot_time("cpu 1 2\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_renders_all_four() {
        let text = render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(text.contains(&format!("\n{name} ")), "{name}:\n{text}");
        }
    }
}

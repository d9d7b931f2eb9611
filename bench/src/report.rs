//! Results: rows, ratios, JSON and Markdown.

use serde::Serialize;
use std::time::Duration;

/// One measured figure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// Benchmark section (`smtp`, `mesh-relay`, ...).
    pub section: String,
    /// The case within the section (`caliopen 2KB x20`, ...).
    pub case: String,
    /// What is measured (`msg/s`, `p99 ms`, ...).
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Target, when the issue sets one, as text (`>= 3`, `< 5`).
    pub target: Option<String>,
    /// Whatever a reader must know to interpret the figure.
    pub note: String,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Machine description (CPU, cores, memory, kernel, filesystem).
    pub machine: String,
    /// Start of the run (RFC 3339, UTC).
    pub started: String,
    /// Mode (`quick` or `full`).
    pub mode: String,
    /// The figures, in the order measured.
    pub rows: Vec<Row>,
    /// Sections skipped or failed, with why.
    pub skipped: Vec<String>,
}

impl Report {
    /// Adds a row and prints it at once.
    pub fn add(
        &mut self,
        section: &str,
        case: &str,
        metric: &str,
        value: f64,
        target: Option<&str>,
        note: &str,
    ) {
        let r = Row {
            section: section.into(),
            case: case.into(),
            metric: metric.into(),
            value,
            target: target.map(str::to_owned),
            note: note.into(),
        };
        eprintln!(
            "  {:<11} {:<44} {:>14} {:<10} {}",
            r.section,
            r.case,
            fmt_value(r.value),
            r.metric,
            r.target
                .as_deref()
                .map(|t| format!("(target {t})"))
                .unwrap_or_default()
        );
        self.rows.push(r);
    }

    /// The value of a row, when present.
    pub fn value(&self, section: &str, case: &str, metric: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.section == section && r.case == case && r.metric == metric)
            .map(|r| r.value)
    }

    /// The Markdown rendering: one table of every figure.
    pub fn markdown(&self) -> String {
        self.markdown_filtered(|_| true)
    }

    /// The same table without the medians (for the README).
    pub fn summary_markdown(&self) -> String {
        self.markdown_filtered(|r| !r.metric.contains("p50"))
    }

    fn markdown_filtered(&self, keep: impl Fn(&Row) -> bool) -> String {
        let mut s = format!(
            "Measured {} ({} mode) on: {}\n\n| section | case | figure | value | target | note |\n|---|---|---|---:|---|---|\n",
            self.started, self.mode, self.machine
        );
        for r in self.rows.iter().filter(|r| keep(r)) {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                cell(&r.section),
                cell(&r.case),
                cell(&r.metric),
                fmt_value(r.value),
                cell(r.target.as_deref().unwrap_or("")),
                cell(&r.note)
            ));
        }
        if !self.skipped.is_empty() {
            s.push_str("\nNot measured in this run:\n\n");
            for k in &self.skipped {
                s.push_str(&format!("- {k}\n"));
            }
        }
        s
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "/")
}

/// A value with a sensible number of digits.
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The `p`-th percentile (0–100) of `samples` by nearest rank; `None` when empty.
pub fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    let i = rank.clamp(1, samples.len()) - 1;
    samples.get(i).copied()
}

/// Milliseconds of a duration, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&mut v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&mut v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn markdown_lists_every_row_and_what_was_skipped() {
        let mut r = Report {
            machine: "m".into(),
            ..Default::default()
        };
        r.add("smtp", "a|b", "msg/s", 1234.4, Some(">= 3"), "n");
        r.skipped.push("privacy: pending".into());
        let md = r.markdown();
        assert!(
            md.contains("| smtp | a/b | msg/s | 1234 | >= 3 | n |"),
            "{md}"
        );
        assert!(md.contains("- privacy: pending"));
        assert_eq!(r.value("smtp", "a|b", "msg/s"), Some(1234.4));
        assert_eq!(fmt_value(0.01234), "0.012");
        assert_eq!(fmt_value(f64::NAN), "n/a");
    }
}

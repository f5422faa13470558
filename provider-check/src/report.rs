//! The suite's report: a table a provider author reads, or one JSON object a CI job parses.

use std::time::Duration;

use serde::Serialize;

use crate::checks::Outcome;

/// One check's result.
#[derive(Debug, Clone)]
pub struct Row {
    /// `group/name`.
    pub name: String,
    /// What it holds the provider to.
    pub about: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran.
    pub elapsed: Duration,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The endpoint as given.
    pub endpoint: String,
    /// The provider's name from `Describe`.
    pub provider: String,
    /// The contract version it says it serves.
    pub contract: String,
    /// Every check that ran, in order.
    pub rows: Vec<Row>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    endpoint: &'a str,
    provider: &'a str,
    contract: &'a str,
    passed: usize,
    failed: usize,
    skipped: usize,
    checks: Vec<JsonRow<'a>>,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    name: &'a str,
    about: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    millis: u128,
}

impl Report {
    /// How many checks passed, failed and were skipped.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for row in &self.rows {
            match row.outcome {
                Outcome::Pass => counts.0 += 1,
                Outcome::Fail(_) => counts.1 += 1,
                Outcome::Skip(_) => counts.2 += 1,
            }
        }
        counts
    }

    /// The failed checks' names and messages.
    pub fn failures(&self) -> Vec<(&str, &str)> {
        self.rows
            .iter()
            .filter_map(|row| match &row.outcome {
                Outcome::Fail(message) => Some((row.name.as_str(), message.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The report as one JSON object.
    pub fn json(&self) -> String {
        let (passed, failed, skipped) = self.counts();
        let report = JsonReport {
            endpoint: &self.endpoint,
            provider: &self.provider,
            contract: &self.contract,
            passed,
            failed,
            skipped,
            checks: self
                .rows
                .iter()
                .map(|row| {
                    let (outcome, message) = match &row.outcome {
                        Outcome::Pass => ("pass", None),
                        Outcome::Fail(message) => ("fail", Some(message.as_str())),
                        Outcome::Skip(message) => ("skip", Some(message.as_str())),
                    };
                    JsonRow {
                        name: &row.name,
                        about: &row.about,
                        outcome,
                        message,
                        millis: row.elapsed.as_millis(),
                    }
                })
                .collect(),
        };
        serde_json::to_string_pretty(&report).expect("the report serialises")
    }

    /// The report as text: one line per check, the reason under each failure and skip, and a
    /// summary line.
    pub fn text(&self) -> String {
        let mut out = format!(
            "provider {:?} at {} (contract {})\n\n",
            self.provider, self.endpoint, self.contract
        );
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for row in &self.rows {
            let (mark, message) = match &row.outcome {
                Outcome::Pass => ("PASS", None),
                Outcome::Fail(message) => ("FAIL", Some(message)),
                Outcome::Skip(message) => ("SKIP", Some(message)),
            };
            out.push_str(&format!(
                "{mark}  {:<width$}  {:>6} ms\n",
                row.name,
                row.elapsed.as_millis()
            ));
            if let Some(message) = message {
                out.push_str(&format!("      {message}\n"));
            }
        }
        let (passed, failed, skipped) = self.counts();
        out.push_str(&format!(
            "\n{passed} passed, {failed} failed, {skipped} skipped\n"
        ));
        out
    }
}

//! The run's report: `report.json` (everything), SVG charts and `report.html` (a page that
//! embeds them, no scripts or network needed).

use std::fmt::Write as _;
use std::path::Path;

use super::model::Scale;
use super::scenarios::ScenarioResult;
use super::{Event, Sample, Sim, Window};
use ballast_testkit::svg::{Band, Marker, Series, bar_chart, escape, line_chart};

/// Latency summary of the background fleet writes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WriteStats {
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Writes that got no acknowledgement (outages).
    pub failed: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Histogram: (upper bound ms, writes).
    pub histogram: Vec<(f64, usize)>,
}

/// Everything one run produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Scale.
    pub scale: Scale,
    /// Seed.
    pub seed: u64,
    /// Wall-clock length of the run, ms.
    pub duration_ms: u64,
    /// Per scenario: measurements and invariants.
    pub scenarios: Vec<ScenarioResult>,
    /// The time series.
    pub samples: Vec<Sample>,
    /// Events.
    pub events: Vec<Event>,
    /// Shaded windows.
    pub windows: Vec<Window>,
    /// Leader changes seen by the sampler: (t_ms, new leader).
    pub leader_changes: Vec<(u64, u64)>,
    /// Background write latencies.
    pub writes: WriteStats,
    /// RSS of the three replicas at the end, bytes.
    pub replicas_rss_bytes: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn write_stats(mut latencies: Vec<f64>, failed: u64) -> WriteStats {
    latencies.sort_by(f64::total_cmp);
    let bounds = [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
    ];
    let mut histogram: Vec<(f64, usize)> = bounds.iter().map(|b| (*b, 0)).collect();
    for l in &latencies {
        let bucket = bounds
            .iter()
            .position(|b| l <= b)
            .unwrap_or(bounds.len() - 1);
        histogram[bucket].1 += 1;
    }
    WriteStats {
        acknowledged: latencies.len(),
        failed,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        histogram,
    }
}

/// Leader changes as the sampler saw them: every sample whose leader differs from the last
/// known one.
fn leader_changes(samples: &[Sample]) -> Vec<(u64, u64)> {
    let mut changes = Vec::new();
    let mut last = None;
    for s in samples {
        if let Some(leader) = s.leader
            && Some(leader) != last
        {
            if last.is_some() {
                changes.push((s.t_ms, leader));
            }
            last = Some(leader);
        }
    }
    changes
}

impl Report {
    pub(super) fn build(sim: &Sim, scenarios: Vec<ScenarioResult>, rss: u64) -> Report {
        let samples = sim.shared.samples.lock().clone();
        Report {
            scale: sim.scale,
            seed: sim.args.seed,
            duration_ms: sim.shared.now_ms(),
            scenarios,
            leader_changes: leader_changes(&samples),
            samples,
            events: sim.shared.events.lock().clone(),
            windows: sim.windows.clone(),
            writes: write_stats(
                sim.shared.write_latencies_ms.lock().clone(),
                *sim.shared.writes_failed.lock(),
            ),
            replicas_rss_bytes: rss,
        }
    }

    /// Invariant checks that failed.
    pub fn violations(&self) -> usize {
        self.scenarios
            .iter()
            .flat_map(|s| &s.invariants)
            .filter(|c| !c.holds)
            .count()
    }

    /// Invariant checks run.
    pub fn checks(&self) -> usize {
        self.scenarios.iter().map(|s| s.invariants.len()).sum()
    }

    fn bands(&self) -> Vec<Band> {
        self.windows
            .iter()
            .map(|w| Band {
                from: w.from_ms as f64 / 1000.0,
                to: w.to_ms as f64 / 1000.0,
                label: w.label.clone(),
            })
            .collect()
    }

    fn markers(&self) -> Vec<Marker> {
        self.leader_changes
            .iter()
            .map(|(t, leader)| Marker {
                x: *t as f64 / 1000.0,
                label: format!("leader → replica {leader}"),
            })
            .collect()
    }

    /// Machines demanded, assigned and missing over time.
    pub fn timeline_svg(&self) -> String {
        let series = |name: &str, color, f: fn(&Sample) -> u64| Series {
            name: name.to_string(),
            color,
            points: self
                .samples
                .iter()
                .map(|s| (s.t_ms as f64 / 1000.0, f(s) as f64))
                .collect(),
        };
        line_chart(
            "Machines: demand, assigned, shortfall (shaded: outages; dashed: leader changes)",
            "seconds since start",
            "machines",
            &[
                series("demand (live shards)", "#888", |s| s.demand),
                series("assigned", "#2b6cb0", |s| s.assigned),
                series("shortfall", "#c53030", |s| s.shortfall),
            ],
            &self.bands(),
            &self.markers(),
        )
    }

    /// Machines provisioned per second (growth of the machines held).
    pub fn provisioning_svg(&self) -> String {
        let points = self
            .samples
            .windows(2)
            .map(|w| {
                let dt = (w[1].t_ms.saturating_sub(w[0].t_ms)).max(1) as f64 / 1000.0;
                let added = w[1].held.saturating_sub(w[0].held) as f64;
                (w[1].t_ms as f64 / 1000.0, added / dt)
            })
            .collect();
        let reaching = self
            .samples
            .iter()
            .map(|s| (s.t_ms as f64 / 1000.0, s.shards_reaching_coordinator as f64))
            .collect();
        line_chart(
            "Provisioning rate and shards reaching a coordinator",
            "seconds since start",
            "machines/s · shards",
            &[
                Series {
                    name: "machines provisioned/s".into(),
                    color: "#2f855a",
                    points,
                },
                Series {
                    name: "shards reaching a coordinator".into(),
                    color: "#805ad5",
                    points: reaching,
                },
            ],
            &self.bands(),
            &self.markers(),
        )
    }

    /// Histogram of background write latencies.
    pub fn latency_svg(&self) -> String {
        let bars: Vec<(String, f64)> = self
            .writes
            .histogram
            .iter()
            .map(|(bound, count)| (format!("≤{bound}"), *count as f64))
            .collect();
        bar_chart(
            "Fleet write latency (background writes, all scenarios)",
            "milliseconds",
            "writes",
            &bars,
        )
    }

    /// A plain-text summary for the terminal.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} scale, seed {}: {} scenarios in {:.1} s, {} invariant checks, {} violations\n",
            self.scale.name,
            self.seed,
            self.scenarios.len(),
            self.duration_ms as f64 / 1000.0,
            self.checks(),
            self.violations()
        );
        for s in &self.scenarios {
            let figures: Vec<String> = s
                .measurements
                .iter()
                .map(|(k, v)| format!("{k}={v:.0}"))
                .collect();
            let _ = writeln!(out, "  {:?}: {}", s.scenario, figures.join(" "));
        }
        let _ = writeln!(
            out,
            "  background writes: {} acknowledged, {} failed; p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
            self.writes.acknowledged,
            self.writes.failed,
            self.writes.p50_ms,
            self.writes.p99_ms,
            self.writes.max_ms
        );
        let _ = write!(
            out,
            "  leader changes seen: {}; replicas' RSS at the end: {:.1} MiB",
            self.leader_changes.len(),
            self.replicas_rss_bytes as f64 / (1 << 20) as f64
        );
        out
    }

    fn html(&self) -> String {
        let mut page = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>ballast-sim fleet report</title>\
             <style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}\
             table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
             .ok{color:#2f855a}.fail{color:#c53030;font-weight:bold}</style></head><body>",
        );
        let _ = write!(
            page,
            "<h1>Fleet simulation: {} scale, seed {}</h1><p>{} shards, {} domains, {} clusters, {} quotas; \
             {} scenarios in {:.1} s; <b>{} invariant checks, {} violations</b>.</p>",
            self.scale.name,
            self.seed,
            self.scale.shards,
            self.scale.domains,
            self.scale.clusters,
            self.scale.quotas,
            self.scenarios.len(),
            self.duration_ms as f64 / 1000.0,
            self.checks(),
            self.violations()
        );
        page.push_str(&self.timeline_svg());
        page.push_str(&self.provisioning_svg());
        page.push_str(&self.latency_svg());
        for s in &self.scenarios {
            let _ = write!(
                page,
                "<h2>{:?}</h2><p>started at {:.1} s, took {:.1} s</p><table>",
                s.scenario,
                s.started_ms as f64 / 1000.0,
                s.duration_ms as f64 / 1000.0
            );
            for (k, v) in &s.measurements {
                let _ = write!(page, "<tr><th>{}</th><td>{v:.1}</td></tr>", escape(k));
            }
            page.push_str("</table><table>");
            for c in &s.invariants {
                let _ = write!(
                    page,
                    "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                    if c.holds { "ok" } else { "fail" },
                    if c.holds { "holds" } else { "VIOLATED" },
                    escape(&c.name),
                    escape(&c.detail)
                );
            }
            page.push_str("</table>");
        }
        page.push_str("<h2>Events</h2><table>");
        for e in &self.events {
            let _ = write!(
                page,
                "<tr><td>{:.1} s</td><td>{}</td></tr>",
                e.t_ms as f64 / 1000.0,
                escape(&e.what)
            );
        }
        let _ = write!(
            page,
            "</table><pre>{}</pre></body></html>",
            escape(&self.summary())
        );
        page
    }

    /// Writes `report.json`, `timeline.svg`, `provisioning.svg`, `latency.svg` and
    /// `report.html` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("timeline.svg"), self.timeline_svg())?;
        std::fs::write(dir.join("provisioning.svg"), self.provisioning_svg())?;
        std::fs::write(dir.join("latency.svg"), self.latency_svg())?;
        std::fs::write(dir.join("report.html"), self.html())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stats_bucket_and_rank() {
        let stats = write_stats(vec![0.5, 3.0, 3.0, 700.0, 5000.0], 2);
        assert_eq!(stats.acknowledged, 5);
        assert_eq!(stats.failed, 2);
        assert_eq!(stats.p50_ms, 3.0);
        assert_eq!(stats.max_ms, 5000.0);
        let count = |bound: f64| stats.histogram.iter().find(|h| h.0 == bound).unwrap().1;
        assert_eq!(
            (count(1.0), count(5.0), count(1000.0), count(2000.0)),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn leader_changes_ignore_gaps_without_a_leader() {
        let at = |t_ms, leader| Sample {
            t_ms,
            leader,
            ..Sample::default()
        };
        let samples = [
            at(0, Some(1)),
            at(1, None),
            at(2, Some(1)),
            at(3, Some(2)),
            at(4, None),
            at(5, Some(3)),
        ];
        assert_eq!(leader_changes(&samples), [(3, 2), (5, 3)]);
    }
}

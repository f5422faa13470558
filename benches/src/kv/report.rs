//! The KV benchmark's report: what was measured, rendered as Markdown tables and SVG charts.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::failover::{Failover, Probing};
use crate::stats::{Summary, mib, ms};

/// A system the benchmark measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// This build's Ballast.
    Ballast,
    /// etcd with its default flags.
    Etcd,
    /// etcd with timers matched to Ballast's (failover only).
    EtcdMatched,
    /// Another build's Ballast (`--compare-with`).
    Compared,
    /// This build's Ballast keeping its log in an etcd of its own (`--backend etcd`).
    OnEtcd,
    /// This build's Ballast with `--read-policy lease` (reads only).
    BallastLease,
}

/// Which endpoints a client sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// All three, balanced.
    Balanced,
    /// Only the leader (at the start of the run).
    Leader,
    /// Only one follower (at the start of the run).
    Follower,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Balanced => "all three",
            Via::Leader => "leader",
            Via::Follower => "a follower",
        }
    }
}

/// One system at one level.
pub struct Measured {
    pub system: System,
    pub value_bytes: usize,
    pub in_flight: usize,
    pub via: Via,
    /// Successful operations per second.
    pub rate: f64,
    pub latency: Summary,
    pub errors: usize,
    /// The first failed request's gRPC code and message, when one failed.
    pub first_error: Option<String>,
    /// The fsync probe taken right before this level.
    pub fsync: Duration,
    /// CPU time the system's server processes used per successful operation (zero: not
    /// measured).
    pub cpu_per_op: Duration,
}

impl Measured {
    /// The level `(system, value bytes, in flight, via)` from what a load run returned
    /// (`(rate, latency, errors, first error)`), and the fsync probe taken before it.
    pub fn of(
        (system, value_bytes, in_flight, via): (System, usize, usize, Via),
        (rate, latency, errors, first_error): (f64, Summary, usize, Option<String>),
        fsync: Duration,
    ) -> Measured {
        Measured {
            system,
            value_bytes,
            in_flight,
            via,
            rate,
            latency,
            errors,
            first_error,
            fsync,
            cpu_per_op: Duration::ZERO,
        }
    }

    /// The same level, with `cpu` of server time used over the `seconds` it ran.
    pub fn with_cpu(self, cpu: Duration, seconds: u64) -> Measured {
        let ops = self.rate * seconds as f64;
        Measured {
            cpu_per_op: if ops >= 1.0 {
                cpu.div_f64(ops)
            } else {
                Duration::ZERO
            },
            ..self
        }
    }
}

/// CPU per operation in microseconds, or a dash when not measured.
fn cpu_us(m: &Measured) -> String {
    micros(m.cpu_per_op)
}

/// A CPU time per operation in microseconds, or a dash when not measured (zero).
fn micros(per_op: Duration) -> String {
    if per_op.is_zero() {
        "—".into()
    } else {
        format!("{:.0}", per_op.as_secs_f64() * 1e6)
    }
}

/// The mean CPU per operation of two turns, zero (not measured) when either was not.
fn mean_cpu(x: &Measured, y: &Measured) -> Duration {
    if x.cpu_per_op.is_zero() || y.cpu_per_op.is_zero() {
        Duration::ZERO
    } else {
        (x.cpu_per_op + y.cpu_per_op) / 2
    }
}

/// Everything one run measured.
pub struct Report {
    pub value_bytes: Vec<usize>,
    pub seconds: u64,
    pub etcd_version: String,
    pub machine: String,
    /// How Ballast's timers were set, for the text.
    pub ballast_timers: String,
    /// The matched etcd's timer flags.
    pub matched_etcd: String,
    pub compared_with: Option<PathBuf>,
    pub probing: Probing,
    pub puts: Vec<Measured>,
    /// With a compared build: its turn and this build's again at each balanced put level,
    /// in the opposite order (the compared build first).
    pub swapped_puts: Vec<Measured>,
    pub reads: Vec<Measured>,
    /// Leader kills in the order they happened.
    pub kills: Vec<(System, Failover)>,
    /// RSS of the three members (Ballast, etcd) before the load and after it.
    pub rss_idle: (u64, u64),
    pub rss_loaded: (u64, u64),
    /// Data dirs of the three members (Ballast, etcd) after the load.
    pub disk: (u64, u64),
}

/// `p50 / p99 / max` in milliseconds.
fn spread(s: &Summary) -> String {
    format!("{} / {} / {}", ms(s.p50), ms(s.p99), ms(s.max))
}

/// A ratio with two decimals, or a dash when the divisor measured nothing.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

impl Report {
    fn find(
        rows: &[Measured],
        system: System,
        value_bytes: usize,
        in_flight: usize,
        via: Via,
    ) -> Option<&Measured> {
        rows.iter().find(|m| {
            m.system == system
                && m.value_bytes == value_bytes
                && m.in_flight == in_flight
                && m.via == via
        })
    }

    /// Rows of one system against another, for every level both have.
    fn pairs(
        rows: &[Measured],
        ours: System,
        theirs: System,
    ) -> impl Iterator<Item = (&Measured, &Measured)> {
        rows.iter()
            .filter(move |m| m.system == ours)
            .filter_map(move |b| {
                Self::find(rows, theirs, b.value_bytes, b.in_flight, b.via).map(|e| (b, e))
            })
    }

    fn failover_of(&self, system: System) -> (Summary, Summary, usize) {
        let mut leader: Vec<Duration> = Vec::new();
        let mut ack: Vec<Duration> = Vec::new();
        for (s, f) in &self.kills {
            if *s == system {
                leader.push(f.to_leader);
                ack.push(f.to_ack);
            }
        }
        let count = ack.len();
        (Summary::of(&mut leader), Summary::of(&mut ack), count)
    }

    /// The Markdown text; `stem` names the charts next to it.
    pub fn render(&self, stem: &str) -> String {
        self.try_render(stem)
            .expect("writing to a String cannot fail")
    }

    fn try_render(&self, stem: &str) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        writeln!(out, "# KV benchmark: Ballast vs etcd\n")?;
        writeln!(
            out,
            "`cargo run --release -p ballast-bench -- kv` on {}. Machine: {}.\n\n\
             Every comparison here comes from this one run. At each level the systems take \
             turns — etcd, Ballast{}, Ballast on etcd, then etcd and Ballast through a follower \
             — for {} s each, and each turn starts with an fsync probe of the disk (a 4 KiB \
             write and `fdatasync`, median of 16), printed with its row, so a change in disk \
             speed during the run shows. \"server CPU\" is the user and system CPU time the \
             system's server processes used during the turn (from `/proc`), per request that \
             succeeded; the client and the other systems are not counted, and on a box with \
             few cores it bounds throughput. The client is the same for all: etcd's v3 API over \
             tonic, balanced over the three endpoints unless the row says otherwise, unique \
             keys. etcd {} (Debian `etcd-server`, default flags, fsync on) runs as a cluster of \
             its own; Ballast with {}.\n",
            crate::report::today(),
            self.machine,
            if self.compared_with.is_some() {
                ", the build compared with"
            } else {
                ""
            },
            self.seconds,
            self.etcd_version,
            self.ballast_timers
        )?;
        for &size in &self.value_bytes {
            writeln!(out, "## Puts of {size}-byte values\n")?;
            writeln!(
                out,
                "| in flight | to | Ballast puts/s | etcd puts/s | ratio | Ballast p50 / p99 / max ms | etcd p50 / p99 / max ms | fsync before B / e ms | server CPU µs a put B / e | errors B / e |"
            )?;
            writeln!(out, "|---:|---|---:|---:|---:|---|---|---|---|---|")?;
            for (b, e) in Self::pairs(&self.puts, System::Ballast, System::Etcd)
                .filter(|(b, _)| b.value_bytes == size)
            {
                writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
                    b.in_flight,
                    b.via.label(),
                    b.rate,
                    e.rate,
                    ratio(b.rate, e.rate),
                    spread(&b.latency),
                    spread(&e.latency),
                    ms(b.fsync),
                    ms(e.fsync),
                    cpu_us(b),
                    cpu_us(e),
                    b.errors,
                    e.errors
                )?;
            }
            writeln!(out)?;
        }
        if !self.value_bytes.is_empty() {
            writeln!(out, "![puts per second]({stem}-throughput.svg)\n")?;
        }

        writeln!(out, "## Ballast on etcd\n")?;
        writeln!(
            out,
            "Ballast with `--backend etcd` (ADR 0009): three Ballast replicas keeping their log \
             in a 3-member etcd of their own (not the one measured alone), one etcd \
             transaction per batch of writes; same client and workload.\n"
        )?;
        writeln!(
            out,
            "| value B | in flight | puts/s | vs etcd alone | p50 / p99 / max ms | fsync before ms | errors |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---|---:|---:|")?;
        for (o, e) in Self::pairs(&self.puts, System::OnEtcd, System::Etcd) {
            writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} |",
                o.value_bytes,
                o.in_flight,
                o.rate,
                ratio(o.rate, e.rate),
                spread(&o.latency),
                ms(o.fsync),
                o.errors
            )?;
        }
        writeln!(out)?;

        if let Some(other) = &self.compared_with {
            writeln!(out, "## This build against another\n")?;
            writeln!(
                out,
                "`{}`'s replicas, same flags, client and workload. At each level the two builds \
                 take two turns each, in both orders: this build right after etcd, then the \
                 compared build; after the other systems, the compared build, then this build \
                 (a system's place in the rotation moves its figures by a few percent). Puts/s \
                 and CPU are the means of a build's two turns; the ratio in each order is shown \
                 too, and latencies are from the first order. The compared build also takes the \
                 follower turns (not shown), so both carry the same data into later levels.\n",
                other.display()
            )?;
            writeln!(
                out,
                "| value B | in flight | this build puts/s | compared build puts/s | ratio | ratio, this first / compared first | this p50 / p99 / max ms | compared p50 / p99 / max ms | server CPU µs a put this / compared |"
            )?;
            writeln!(out, "|---:|---:|---:|---:|---:|---|---|---|---|")?;
            for (b, a) in Self::pairs(&self.puts, System::Ballast, System::Compared) {
                let again = |system| {
                    Self::find(
                        &self.swapped_puts,
                        system,
                        b.value_bytes,
                        b.in_flight,
                        b.via,
                    )
                };
                let (Some(b2), Some(a2)) = (again(System::Ballast), again(System::Compared)) else {
                    continue;
                };
                writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.0} | {} | {} / {} | {} | {} | {} / {} |",
                    b.value_bytes,
                    b.in_flight,
                    (b.rate + b2.rate) / 2.0,
                    (a.rate + a2.rate) / 2.0,
                    ratio(b.rate + b2.rate, a.rate + a2.rate),
                    ratio(b.rate, a.rate),
                    ratio(b2.rate, a2.rate),
                    spread(&b.latency),
                    spread(&a.latency),
                    micros(mean_cpu(b, b2)),
                    micros(mean_cpu(a, a2))
                )?;
            }
            writeln!(out)?;
        }

        writeln!(out, "## Linearizable reads\n")?;
        writeln!(
            out,
            "Range requests for one key (etcd's default, linearizable: a read index confirmed \
             with a quorum before answering), to the leader only or to one follower only.\n"
        )?;
        writeln!(
            out,
            "| in flight | to | Ballast reads/s | etcd reads/s | Ballast p50 / p99 / max ms | etcd p50 / p99 / max ms | server CPU µs a read B / e | errors B / e |"
        )?;
        writeln!(out, "|---:|---|---:|---:|---|---|---|---|")?;
        for (b, e) in Self::pairs(&self.reads, System::Ballast, System::Etcd) {
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} / {} | {} / {} |",
                b.in_flight,
                b.via.label(),
                b.rate,
                e.rate,
                spread(&b.latency),
                spread(&e.latency),
                cpu_us(b),
                cpu_us(e),
                b.errors,
                e.errors
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "The same reads of a third Ballast cluster whose replicas run with `--read-policy \
             lease` (ADR 0020): the leader answers from its own state while a majority accepted \
             its appends within its lease, and hands followers a read index the same way. Run \
             right after the read-index cluster's level, at each level.\n"
        )?;
        writeln!(
            out,
            "| in flight | to | lease reads/s | read-index reads/s | ratio | lease p50 / p99 / max ms | read-index p50 / p99 / max ms | server CPU µs a read, lease / read-index | errors lease / read-index |"
        )?;
        writeln!(out, "|---:|---|---:|---:|---:|---|---|---|---|")?;
        for (l, b) in Self::pairs(&self.reads, System::BallastLease, System::Ballast) {
            writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {} / {} |",
                l.in_flight,
                l.via.label(),
                l.rate,
                b.rate,
                ratio(l.rate, b.rate),
                spread(&l.latency),
                spread(&b.latency),
                cpu_us(l),
                cpu_us(b),
                l.errors,
                b.errors
            )?;
        }
        writeln!(out)?;
        if let Some(other) = &self.compared_with {
            writeln!(
                out,
                "Reads of `{}`'s replicas, run right after this build's at each level:\n",
                other.display()
            )?;
            writeln!(
                out,
                "| in flight | to | this build reads/s | compared build reads/s | ratio | this p50 / p99 / max ms | compared p50 / p99 / max ms |"
            )?;
            writeln!(out, "|---:|---|---:|---:|---:|---|---|")?;
            for (b, a) in Self::pairs(&self.reads, System::Ballast, System::Compared) {
                writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.0} | {} | {} | {} |",
                    b.in_flight,
                    b.via.label(),
                    b.rate,
                    a.rate,
                    ratio(b.rate, a.rate),
                    spread(&b.latency),
                    spread(&a.latency)
                )?;
            }
            writeln!(out)?;
        }

        let failed: Vec<&Measured> = self
            .puts
            .iter()
            .chain(&self.reads)
            .filter(|m| m.errors > 0)
            .collect();
        if !failed.is_empty() {
            writeln!(out, "## Failed requests\n")?;
            writeln!(
                out,
                "Levels where requests failed, with the first failure (a failed request is not \
                 retried: the client sends its next one at once).\n"
            )?;
            writeln!(
                out,
                "| system | kind | value B | in flight | to | failed | first failure |"
            )?;
            writeln!(out, "|---|---|---:|---:|---|---:|---|")?;
            for m in failed {
                let kind = if self.reads.iter().any(|r| std::ptr::eq(r, m)) {
                    "reads"
                } else {
                    "puts"
                };
                writeln!(
                    out,
                    "| {:?} | {kind} | {} | {} | {} | {} | {} |",
                    m.system,
                    m.value_bytes,
                    m.in_flight,
                    m.via.label(),
                    m.errors,
                    m.first_error.as_deref().unwrap_or("-").replace('|', "\\|")
                )?;
            }
            writeln!(out)?;
        }

        writeln!(out, "## Leader SIGKILL\n")?;
        writeln!(
            out,
            "The leader is SIGKILLed; from the signal on, a put goes out every {} ms without \
             waiting for the ones before it (each given {} ms), and each surviving member is \
             asked who leads (Maintenance.Status) at the same interval. \"New leader\" is the \
             first answer naming a leader other than the killed one; \"next put\" the first \
             acknowledgement of a put sent after the kill. The killed member is restarted and \
             caught up before the next kill. The systems take turns: etcd with its defaults \
             (heartbeat 100 ms, election timeout 1 s), etcd with `{}`, Ballast with {}.\n",
            self.probing.every.as_millis(),
            self.probing.timeout.as_millis(),
            self.matched_etcd,
            self.ballast_timers
        )?;
        writeln!(
            out,
            "| system | kills | new leader median / max ms | next put median / max ms |"
        )?;
        writeln!(out, "|---|---:|---|---|")?;
        for (system, name) in [
            (System::Ballast, "Ballast".to_string()),
            (System::Etcd, "etcd, defaults".to_string()),
            (
                System::EtcdMatched,
                format!("etcd, `{}`", self.matched_etcd),
            ),
        ] {
            let (leader, ack, count) = self.failover_of(system);
            writeln!(
                out,
                "| {name} | {count} | {} / {} | {} / {} |",
                ms(leader.p50),
                ms(leader.max),
                ms(ack.p50),
                ms(ack.max)
            )?;
        }
        writeln!(out, "\n![failover]({stem}-failover.svg)\n")?;
        writeln!(
            out,
            "On-disk size of the three members after the load: Ballast {} MiB, etcd {} MiB. \
             RSS of the three together: Ballast {} MiB idle, {} MiB after the load; etcd {} MiB \
             idle, {} MiB after the load.",
            mib(self.disk.0),
            mib(self.disk.1),
            mib(self.rss_idle.0),
            mib(self.rss_loaded.0),
            mib(self.rss_idle.1),
            mib(self.rss_loaded.1)
        )?;
        Ok(out)
    }

    /// The charts, by file-name suffix.
    pub fn charts(&self) -> Vec<(&'static str, String)> {
        let mut charts = Vec::new();
        if let Some(&size) = self.value_bytes.first() {
            let bars: Vec<(String, f64)> = Self::pairs(&self.puts, System::Ballast, System::Etcd)
                .filter(|(b, _)| b.value_bytes == size && b.via == Via::Balanced)
                .flat_map(|(b, e)| {
                    [
                        (format!("etcd ×{}", e.in_flight), e.rate),
                        (format!("Ballast ×{}", b.in_flight), b.rate),
                    ]
                })
                .collect();
            charts.push((
                "throughput",
                ballast_testkit::svg::bar_chart(
                    &format!(
                        "etcd-API puts of {size} B per second, 3 members on loopback (×N = in flight)"
                    ),
                    "system × in flight",
                    "puts/s",
                    &bars,
                ),
            ));
        }
        let kills: Vec<(String, f64)> = self
            .kills
            .iter()
            .enumerate()
            .map(|(n, (system, f))| {
                let tag = match system {
                    System::Etcd => "e",
                    System::EtcdMatched => "m",
                    _ => "B",
                };
                (format!("{tag}{}", n / 3), f.to_ack.as_secs_f64() * 1000.0)
            })
            .collect();
        charts.push((
            "failover",
            ballast_testkit::svg::bar_chart(
                "Leader SIGKILL → next acknowledged put (e = etcd defaults, m = etcd matched timers, B = Ballast)",
                "kill",
                "ms",
                &kills,
            ),
        ));
        charts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(system: System, in_flight: usize, via: Via, rate: f64) -> Measured {
        Measured {
            system,
            value_bytes: 256,
            in_flight,
            via,
            rate,
            latency: Summary {
                count: 10,
                p50: Duration::from_millis(2),
                p99: Duration::from_millis(5),
                max: Duration::from_millis(9),
            },
            errors: 0,
            first_error: None,
            fsync: Duration::from_micros(1500),
            cpu_per_op: Duration::from_micros(400),
        }
    }

    fn report(compared: bool) -> Report {
        let mut puts = vec![
            level(System::Etcd, 32, Via::Balanced, 4000.0),
            level(System::Ballast, 32, Via::Balanced, 8000.0),
            level(System::OnEtcd, 32, Via::Balanced, 1000.0),
            level(System::Etcd, 32, Via::Follower, 3000.0),
            level(System::Ballast, 32, Via::Follower, 6000.0),
        ];
        let mut swapped_puts = Vec::new();
        if compared {
            puts.push(level(System::Compared, 32, Via::Balanced, 10000.0));
            swapped_puts.push(level(System::Compared, 32, Via::Balanced, 6000.0));
            swapped_puts.push(Measured {
                cpu_per_op: Duration::from_micros(200),
                ..level(System::Ballast, 32, Via::Balanced, 12000.0)
            });
        }
        let kill = |ms| Failover {
            to_leader: Duration::from_millis(ms - 20),
            to_ack: Duration::from_millis(ms),
        };
        Report {
            value_bytes: vec![256],
            seconds: 5,
            etcd_version: "3.4.30".into(),
            machine: "test".into(),
            ballast_timers: "its default timers".into(),
            matched_etcd: "--heartbeat-interval 50 --election-timeout 250".into(),
            compared_with: compared.then(|| PathBuf::from("/tmp/old-bench")),
            probing: Probing {
                every: Duration::from_millis(20),
                timeout: Duration::from_millis(250),
            },
            puts,
            swapped_puts,
            reads: vec![
                level(System::Etcd, 1, Via::Leader, 900.0),
                level(System::Ballast, 1, Via::Leader, 1800.0),
                level(System::BallastLease, 1, Via::Leader, 3600.0),
            ],
            kills: vec![
                (System::Etcd, kill(1200)),
                (System::EtcdMatched, kill(400)),
                (System::Ballast, kill(250)),
            ],
            rss_idle: (30 << 20, 80 << 20),
            rss_loaded: (60 << 20, 300 << 20),
            disk: (40 << 20, 200 << 20),
        }
    }

    /// Each row pairs the same level of the two systems, and the ratios follow from them.
    #[test]
    fn rows_pair_the_same_level_and_give_ratios() {
        let text = report(false).render("kv");
        assert!(
            text.contains("| 32 | all three | 8000 | 4000 | 2.00 |"),
            "{text}"
        );
        assert!(
            text.contains("| 32 | a follower | 6000 | 3000 | 2.00 |"),
            "{text}"
        );
        assert!(text.contains("| 256 | 32 | 1000 | 0.25 |"), "{text}");
        assert!(text.contains("| 1 | leader | 1800 | 900 |"), "{text}");
        assert!(
            text.contains("| 1 | leader | 3600 | 1800 | 2.00 |"),
            "lease reads: {text}"
        );
        assert!(
            text.contains("| Ballast | 1 | 230.00 / 230.00 | 250.00 / 250.00 |"),
            "{text}"
        );
        assert!(
            text.contains("| etcd, defaults | 1 | 1180.00 / 1180.00 | 1200.00 / 1200.00 |"),
            "{text}"
        );
        assert!(text.contains("1.50 / 1.50"), "fsync probes printed: {text}");
        assert!(!text.contains("This build against another"), "{text}");
    }

    /// The build compared with gets its own table only when there is one, from both orders
    /// of the two builds' turns.
    #[test]
    fn a_compared_build_gets_its_own_table_from_both_orders() {
        let text = report(true).render("kv");
        assert!(text.contains("This build against another"), "{text}");
        assert!(
            text.contains("| 256 | 32 | 10000 | 8000 | 1.25 | 0.80 / 2.00 |"),
            "means of both turns, then the ratio in each order: {text}"
        );
        assert!(text.contains("| 300 / 400 |"), "mean CPU a put: {text}");
    }

    /// A system that measured nothing gives a dash, not a division by zero.
    #[test]
    fn a_ratio_over_nothing_is_a_dash() {
        assert_eq!(ratio(5.0, 0.0), "–");
        assert_eq!(ratio(3.0, 2.0), "1.50");
    }
}

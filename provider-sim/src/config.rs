//! `ballast-provider-sim`'s one configuration struct: its flags (also `BALLAST_PROVIDER_*`
//! variables and a `--config` TOML file, see `ballast-settings`).

use std::net::SocketAddr;
use std::path::PathBuf;

use ballast_protocol::providerpb::Resources;
use ballast_tls::TlsArgs;
use clap::{Parser, ValueEnum};

use crate::book::{Breach, Catalog};

/// How the provider's changes reach its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sync {
    /// Group commit: each call's batch goes to the journal under the book's lock; one fsync
    /// outside it covers every batch written meanwhile.
    Group,
    /// One fsync per call, under the book's lock.
    PerCall,
}

/// A simulated capacity provider served over Ballast's provider contract.
#[derive(Parser, Debug, Clone)]
#[command(name = "ballast-provider-sim", version)]
pub struct ProviderArgs {
    /// Address to serve the provider contract on (port 0 picks one; the chosen address is
    /// printed as `listening on ADDR`).
    #[arg(
        long,
        env = "BALLAST_PROVIDER_LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    pub listen: SocketAddr,
    /// Where machines, fences and idempotency answers are kept (on disk before every answer).
    /// Without it the provider keeps them in memory and says `durable: false`.
    #[arg(long, env = "BALLAST_PROVIDER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How changes reach the disk: `group` (calls running together share one fsync) or
    /// `per-call` (one fsync per call, in turn; for comparison in benchmarks).
    #[arg(long, env = "BALLAST_PROVIDER_SYNC", value_enum, default_value_t = Sync::Group)]
    pub sync: Sync,
    /// The provider's name (as registered with `ballastctl provider set`).
    #[arg(long, env = "BALLAST_PROVIDER_NAME", default_value = "sim")]
    pub name: String,
    /// The quota machines count against (default: the provider's name).
    #[arg(long, env = "BALLAST_PROVIDER_QUOTA_PROVIDER")]
    pub quota_provider: Option<String>,
    /// Regions served (repeat or comma-separate).
    #[arg(
        long = "region",
        env = "BALLAST_PROVIDER_REGIONS",
        value_delimiter = ',',
        default_value = "local"
    )]
    pub regions: Vec<String>,
    /// Availability zones, for `Describe`.
    #[arg(long = "zone", env = "BALLAST_PROVIDER_ZONES", value_delimiter = ',')]
    pub zones: Vec<String>,
    /// Topology domains served (repeat or comma-separate); none serves any domain.
    #[arg(
        long = "domain",
        env = "BALLAST_PROVIDER_DOMAINS",
        value_delimiter = ','
    )]
    pub domains: Vec<String>,
    /// Machine shapes: `NAME=CPU_MILLIS,MEMORY_MIB,GPUS,PRICE_PER_HOUR` (repeat).
    #[arg(
        long = "shape",
        env = "BALLAST_PROVIDER_SHAPES",
        value_delimiter = ';',
        value_parser = parse_shape,
        default_values = ["small=2000,8192,0,0.10", "large=16000,65536,0,0.80", "gpu=32000,262144,8,12.0"]
    )]
    pub shapes: Vec<(String, Resources, f64)>,
    /// Capacity types; the first is the default for creates that name none.
    #[arg(long = "capacity-type", env = "BALLAST_PROVIDER_CAPACITY_TYPES", value_delimiter = ',', default_values = ["on-demand", "spot"])]
    pub capacity_types: Vec<String>,
    /// Most live machines at once (creates past it are refused `insufficient-capacity`).
    #[arg(long, env = "BALLAST_PROVIDER_CAPACITY")]
    pub capacity: Option<u64>,
    /// How many answered idempotency keys are kept; the oldest are forgotten first, so a
    /// retry must come before this many newer calls.
    #[arg(long, env = "BALLAST_PROVIDER_IDEMPOTENCY_KEYS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_keys: u64,
    /// Simulated latency of every mutating call, in milliseconds.
    #[arg(long, env = "BALLAST_PROVIDER_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// A deliberate contract breach, for tests only: to see the conformance suite catch it,
    /// or a shard cope with it (`sim/tests/bad_provider.rs`). Hidden from `--help`.
    #[arg(long, hide = true, value_enum, default_value_t = BreachArg::None)]
    pub broken: BreachArg,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `--broken` (for tests; see [`Breach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BreachArg {
    /// Keep the contract.
    None,
    /// Accept every grant.
    IgnoreFencing,
    /// Forget idempotency keys.
    NotIdempotent,
    /// Answer creates and configures with a machine of another id.
    WrongId,
    /// Answer creates with the machine in another domain.
    WrongDomain,
    /// Carry out mutating calls and never answer them; reads still answer.
    Hang,
    /// Answer creates with an empty machine.
    Garbage,
    /// Refuse every delete.
    RefuseDeletes,
    /// Carry out configures and never answer them.
    LoseConfigureAnswers,
}

fn parse_shape(text: &str) -> Result<(String, Resources, f64), String> {
    let usage =
        || format!("shape {text:?}: expected NAME=CPU_MILLIS,MEMORY_MIB,GPUS,PRICE_PER_HOUR");
    let (name, fields) = text.split_once('=').ok_or_else(usage)?;
    let fields: Vec<&str> = fields.split(',').map(str::trim).collect();
    let [cpu, memory, gpus, price] = fields.as_slice() else {
        return Err(usage());
    };
    let number = |what: &str, value: &str| {
        value
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("shape {name}: {what} {value:?} is not a whole number >= 0"))
    };
    let resources = Resources {
        cpu_millis: number("cpu millis", cpu)?,
        memory_mib: number("memory MiB", memory)?,
        gpus: number("GPUs", gpus)?,
    };
    let price: f64 = price
        .parse()
        .ok()
        .filter(|p: &f64| p.is_finite() && *p >= 0.0)
        .ok_or_else(|| format!("shape {name}: price {price:?} is not a number >= 0"))?;
    if name.trim().is_empty() {
        return Err(usage());
    }
    Ok((name.trim().to_string(), resources, price))
}

impl ProviderArgs {
    /// What the provider offers.
    pub fn catalog(&self) -> Catalog {
        Catalog {
            name: self.name.clone(),
            quota_provider: self
                .quota_provider
                .clone()
                .unwrap_or_else(|| self.name.clone()),
            regions: self.regions.clone(),
            zones: self.zones.clone(),
            domains: self.domains.iter().cloned().collect(),
            shapes: self
                .shapes
                .iter()
                .map(|(name, resources, price)| (name.clone(), (*resources, *price)))
                .collect(),
            capacity_types: self.capacity_types.clone(),
            capacity: self.capacity,
            idempotency_keys: usize::try_from(self.idempotency_keys).unwrap_or(usize::MAX),
        }
    }

    /// The breach asked for.
    pub fn breach(&self) -> Breach {
        match self.broken {
            BreachArg::None => Breach::None,
            BreachArg::IgnoreFencing => Breach::IgnoreFencing,
            BreachArg::NotIdempotent => Breach::NotIdempotent,
            BreachArg::WrongId => Breach::WrongId,
            BreachArg::WrongDomain => Breach::WrongDomain,
            BreachArg::Hang => Breach::Hang,
            BreachArg::LoseConfigureAnswers => Breach::LoseConfigureAnswers,
            BreachArg::Garbage => Breach::Garbage,
            BreachArg::RefuseDeletes => Breach::RefuseDeletes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_or_say_why_not() {
        let (name, resources, price) = parse_shape("m=4000,16384,1,0.5").unwrap();
        assert_eq!(name, "m");
        assert_eq!(
            (resources.cpu_millis, resources.memory_mib, resources.gpus),
            (4000, 16384, 1)
        );
        assert_eq!(price, 0.5);
        assert!(
            parse_shape("m=4000,16384")
                .unwrap_err()
                .contains("expected NAME=")
        );
        assert!(
            parse_shape("m=-1,1,0,0")
                .unwrap_err()
                .contains("cpu millis")
        );
        assert!(parse_shape("m=1,1,0,NaN").unwrap_err().contains("price"));
        assert!(parse_shape("=1,1,0,0").is_err());
    }

    #[test]
    fn defaults_make_a_catalog() {
        let args = ProviderArgs::try_parse_from(["ballast-provider-sim"]).unwrap();
        let catalog = args.catalog();
        assert_eq!(catalog.quota_provider, "sim");
        assert_eq!(catalog.regions, vec!["local"]);
        assert_eq!(catalog.shapes.len(), 3);
        assert_eq!(catalog.capacity_types[0], "on-demand");
        assert_eq!(args.breach(), Breach::None);
    }
}

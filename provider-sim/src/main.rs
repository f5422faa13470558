//! `ballast-provider-sim`: the reference provider as a process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ballast_provider_sim::init_logging();
    let args = ballast_settings::parse_or_exit::<ballast_provider_sim::config::ProviderArgs>();
    ballast_provider_sim::run_until_signal(args).await
}

//! `ballast-provider-sim`: the reference provider as a process.

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads exist, so none of them makes an arena of its own.
    ballast_telemetry::memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            ballast_provider_sim::init_logging();
            let args =
                ballast_settings::parse_or_exit::<ballast_provider_sim::config::ProviderArgs>();
            ballast_provider_sim::run_until_signal(args).await
        })
}

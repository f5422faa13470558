//! `ballast-provider-check --endpoint URL`: runs the conformance suite against a provider.

#[tokio::main]
async fn main() {
    let args = ballast_settings::parse_or_exit::<ballast_provider_check::CheckArgs>();
    std::process::exit(ballast_provider_check::run_and_print(&args).await);
}

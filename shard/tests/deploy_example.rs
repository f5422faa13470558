//! `deploy/vms/shard.toml` uses only settings `ballast-shard` knows, with valid values.

use std::path::Path;

use ballast_shard::config::ShardArgs;

#[test]
fn the_shard_example_parses_and_validates() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/vms/shard.toml");
    let args = vec![
        "ballast-shard".into(),
        "--config".into(),
        file.clone().into(),
    ];
    let parsed = ballast_settings::parse_from::<ShardArgs>(args)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(parsed.coordinators.len(), 3);
    parsed
        .into_config()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

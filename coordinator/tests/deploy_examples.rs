//! The example configuration files under `deploy/` use only settings the binaries know, with
//! values of the right shape, so the documentation cannot drift from the code.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use ballast_coordinator::config::CoordArgs;

fn examples(suffix: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut found = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_coordinator_example_parses() {
    let files: Vec<PathBuf> = examples(".toml")
        .into_iter()
        .filter(|p| !p.ends_with("shard.toml"))
        .collect();
    assert!(files.len() >= 5, "examples found: {files:?}");
    for file in files {
        let args: Vec<OsString> = vec![
            "ballast-coord".into(),
            "--config".into(),
            file.clone().into(),
        ];
        let parsed = ballast_settings::parse_from::<CoordArgs>(args)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(parsed.id >= 1, "{}", file.display());
    }
}

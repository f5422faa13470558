//! Dependency-graph checks for the boundary tests: what a package reaches through its normal
//! and build dependencies (dev-dependencies do not ship), from `cargo metadata`.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// `cargo metadata` of the workspace.
pub fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Names of every package `root_name` reaches through non-dev dependencies, transitively.
pub fn closure(metadata: &Value, root_name: &str) -> BTreeSet<String> {
    let packages = metadata["packages"].as_array().expect("packages");
    let name_of: HashMap<&str, &str> = packages
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve graph");
    let deps_of: HashMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .map(|deps| {
                    deps.iter()
                        .filter(|d| {
                            d["dep_kinds"].as_array().is_some_and(|kinds| {
                                kinds.iter().any(|k| k["kind"].as_str() != Some("dev"))
                            })
                        })
                        .filter_map(|d| d["pkg"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            (n["id"].as_str().unwrap_or(""), deps)
        })
        .collect();
    let root = name_of
        .iter()
        .find(|(_, name)| **name == root_name)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("package {root_name} not in the workspace"));
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        for dep in deps_of.get(id).into_iter().flatten() {
            if seen.insert(name_of.get(dep).copied().unwrap_or("?").to_string()) {
                stack.push(dep);
            }
        }
    }
    seen
}

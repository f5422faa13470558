//! The coordinator's layering, enforced: every module sits on a layer, and code may name only
//! modules of its own layer or below (`docs/adr/0001-architecture-and-crate-boundaries.md`).
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 0 core | `fleet` `kv` `auth` `history` `rebalance` `disruption` `slice_placement` `leadership` `leases` `error` `metrics` `memory` `faults` `dr` `security` | pure logic, leaf recorders, settings |
//! | 1 log | `log` (`log::raft`, `log::etcd`, shared `member` `applied` `wire`) `autopilot` `restore` | the replicated log and what is applied from it |
//! | 2 replica | `replica` `status` | one running replica and what it reports |
//! | 3 duties and APIs | `leader` `service` | what the leader does alone; the gRPC services |
//! | 4 observe | `observe` | the HTTP port: metrics, probes, status page |
//! | 5 process | `node` `config` `process` `offline` `embed` `main` `lib` | starting and running a replica (as a binary or embedded); offline data-dir work |
//!
//! Also: the two log backends never name each other; the leader's duties never call a service;
//! the HTTP port reads through the replica and its status report only; the pure cores do no
//! I/O and know nothing of async runtimes, RPC, storage or consensus.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u8)] = &[
    ("fleet", 0),
    ("kv", 0),
    ("auth", 0),
    ("history", 0),
    ("rebalance", 0),
    ("disruption", 0),
    ("slice_placement", 0),
    ("leadership", 0),
    ("leases", 0),
    ("error", 0),
    ("metrics", 0),
    ("memory", 0),
    ("faults", 0),
    ("dr", 0),
    ("security", 0),
    ("stopping", 0),
    ("log", 1),
    ("autopilot", 1),
    ("restore", 1),
    ("replica", 2),
    ("status", 2),
    ("leader", 3),
    ("service", 3),
    ("observe", 4),
    ("node", 5),
    ("offline", 5),
    ("embed", 5),
    ("process", 5),
    ("config", 5),
    ("main", 5),
    ("lib", 5),
];

/// Modules with no I/O, no runtime, no RPC, no storage and no consensus: what they may not name.
const PURE: &[&str] = &[
    "fleet",
    "kv",
    "auth",
    "history",
    "rebalance",
    "disruption",
    "slice_placement",
];
const IMPURE_CRATES: &[&str] = &[
    "tokio",
    "tonic",
    "fjall",
    "openraft",
    "etcd_client",
    "std::fs",
    "std::net",
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading coordinator/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments (doc links name modules without depending on them).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths under `crate::` the code names, as module paths (`log::raft::network`, ...), also
/// inside grouped imports (`crate::{a, b::c}`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim();
                if !item.is_empty() {
                    found.insert(module_path(item));
                }
            }
        } else {
            found.insert(module_path(rest));
        }
    }
    found
}

fn module_path(text: &str) -> String {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .next()
        .unwrap_or("")
        .trim_end_matches(':')
        .to_string()
}

/// The module a source file belongs to, as a path (`log/raft/network.rs` → `log::raft::network`).
fn file_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn top(path: &str) -> &str {
    path.split("::").next().unwrap_or(path)
}

/// Every forbidden reference in the crate, as `file: reason` lines.
fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let module = file_module(&src, &file);
        let name = file
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        let Some(layer) = layer_of(top(&module)) else {
            found.push(format!(
                "{name}: module {} is on no layer: add it to LAYERS",
                top(&module)
            ));
            continue;
        };
        let text = code(&std::fs::read_to_string(&file).expect("reading a source file"));
        for target in crate_paths(&text) {
            let Some(target_layer) = layer_of(top(&target)) else {
                continue;
            };
            if target_layer > layer {
                found.push(format!(
                    "{name}: layer {layer} ({}) names crate::{target} of layer {target_layer}",
                    top(&module)
                ));
            }
            let pair = (top(&module), top(&target));
            if pair == ("leader", "service") {
                found.push(format!(
                    "{name}: a leader duty calls a service (crate::{target})"
                ));
            }
            if top(&module) == "observe"
                && !["replica", "status", "metrics"].contains(&pair.1)
                && pair.1 != "observe"
            {
                found.push(format!(
                    "{name}: the HTTP port reads through the replica and its status report only, not crate::{target}"
                ));
            }
            for (one, other) in [("log::raft", "log::etcd"), ("log::etcd", "log::raft")] {
                if module.starts_with(one) && target.starts_with(other) {
                    found.push(format!(
                        "{name}: log backend {one} names {other} (crate::{target})"
                    ));
                }
            }
        }
        if PURE.contains(&top(&module)) {
            for impure in IMPURE_CRATES {
                if text.contains(&format!("{impure}::")) || text.contains(&format!("use {impure};"))
                {
                    found.push(format!("{name}: the pure core names {impure}"));
                }
            }
        }
    }
    found
}

#[test]
fn every_module_names_only_its_own_layer_or_below() {
    let found = violations();
    assert!(
        found.is_empty(),
        "the coordinator's layering is broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_must() {
    let paths = crate_paths(
        "use crate::{log::raft::network, replica::Replica};\nlet x = crate::status::report();",
    );
    assert_eq!(
        paths,
        BTreeSet::from([
            "log::raft::network".to_string(),
            "replica::Replica".to_string(),
            "status::report".to_string()
        ])
    );
    assert!(crate_paths(&code("// see crate::service for the gRPC side")).is_empty());
    assert_eq!(layer_of("service"), Some(3));
    assert!(layer_of("nonsense").is_none());
}

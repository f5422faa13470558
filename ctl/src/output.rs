//! The one output layer: every command yields a JSON value and a human rendering, and `--json`
//! picks which one is printed.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde_json::{Value, json};

use ballast_protocol::pb;

/// What a command produced.
pub struct Rendered {
    /// Machine-readable form (`--json`).
    pub json: Value,
    /// Human-readable form.
    pub human: String,
}

/// A borderless table with a header row, like `kubectl get`.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    table
        .lines()
        .map(|l| l.trim_end().trim_start().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A listing of which shard holds each item (`key`, e.g. the domain or the cluster): JSON
/// `{"revision", <plural>: [{<key>, "shard"}]}`, and a table with columns `key` and `shard`.
pub fn shard_holdings(
    revision: u64,
    plural: &str,
    key: &str,
    holdings: Vec<(String, String)>,
) -> Rendered {
    let entries: Vec<Value> = holdings
        .iter()
        .map(|(item, shard)| json!({ key: item, "shard": shard }))
        .collect();
    Rendered {
        json: json!({ "revision": revision, plural: entries }),
        human: table(
            &[key, "shard"],
            holdings
                .into_iter()
                .map(|(item, shard)| vec![item, shard])
                .collect(),
        ),
    }
}

/// The answer to a write: revision and whether anything changed.
pub fn write_result(what: String, response: &pb::WriteResponse) -> Rendered {
    let revision = response.header.as_ref().map(|h| h.revision).unwrap_or(0);
    Rendered {
        json: json!({ "revision": revision, "changed": response.changed }),
        human: if response.changed {
            format!("{what} (revision {revision})")
        } else {
            format!("{what}: already so, nothing changed (revision {revision})")
        },
    }
}

/// Revision carried by an answer header.
pub fn revision(header: &Option<pb::ResponseHeader>) -> u64 {
    header.as_ref().map(|h| h.revision).unwrap_or(0)
}

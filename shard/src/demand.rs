//! Checking a cluster's demand before the shard takes it on. Pure: the decision needs only
//! the request and what the shard holds.

use std::collections::BTreeSet;

use ballast_protocol::pb;
use ballast_protocol::validate::{DomainKey, validate_id};

use crate::cache::Assignments;
use crate::engine::{Need, Placement, Resources, domain_az};

/// Most rows one cluster may submit.
pub const MAX_ROWS: usize = 10_000;
/// Most machines one row may ask for.
pub const MAX_COUNT: u32 = 1_000_000;

/// Why demand was refused. Nothing is stored when a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemandError {
    /// Malformed request.
    #[error("invalid demand: {0}")]
    Invalid(String),
    /// The cluster is not bound to this shard.
    #[error(
        "cluster {cluster:?} is not bound to shard {shard:?}; submit its demand to the shard it is bound to"
    )]
    NotBound {
        /// Cluster.
        cluster: String,
        /// This shard.
        shard: String,
    },
    /// A placement no domain of this shard can ever satisfy.
    #[error("row {row:?}: {reason}")]
    Impossible {
        /// Row id.
        row: String,
        /// Why.
        reason: String,
    },
}

fn non_negative(row: &str, field: &str, value: i64) -> Result<u64, DemandError> {
    u64::try_from(value).map_err(|_| {
        DemandError::Invalid(format!(
            "row {row:?}: {field} is {value}, it must not be negative"
        ))
    })
}

/// Validates a submission and turns it into engine needs (ids `cluster/row`).
pub fn validate(
    shard: &str,
    request: &pb::SubmitDemandRequest,
    held: &Assignments,
) -> Result<Vec<Need>, DemandError> {
    validate_id("cluster id", &request.cluster).map_err(|e| DemandError::Invalid(e.to_string()))?;
    if !held.clusters.contains(&request.cluster) {
        return Err(DemandError::NotBound {
            cluster: request.cluster.clone(),
            shard: shard.to_string(),
        });
    }
    if request.rows.len() > MAX_ROWS {
        return Err(DemandError::Invalid(format!(
            "{} rows, above the limit of {MAX_ROWS}",
            request.rows.len()
        )));
    }
    let azs: BTreeSet<String> = held.domains.iter().filter_map(|d| domain_az(d)).collect();
    let mut seen = BTreeSet::new();
    let mut needs = Vec::with_capacity(request.rows.len());
    for row in &request.rows {
        validate_id("row id", &row.id).map_err(|e| DemandError::Invalid(e.to_string()))?;
        if !seen.insert(row.id.as_str()) {
            return Err(DemandError::Invalid(format!(
                "row {:?} appears twice",
                row.id
            )));
        }
        if row.count > MAX_COUNT {
            return Err(DemandError::Invalid(format!(
                "row {:?}: count {} is above the limit of {MAX_COUNT}",
                row.id, row.count
            )));
        }
        let spec = row.resources.unwrap_or_default();
        let resources = Resources {
            cpu_millis: non_negative(&row.id, "cpu_millis", spec.cpu_millis)?,
            memory_mib: non_negative(&row.id, "memory_mib", spec.memory_mib)?,
            gpus: u32::try_from(non_negative(&row.id, "gpus", spec.gpus)?).map_err(|_| {
                DemandError::Invalid(format!("row {:?}: gpus {} is too large", row.id, spec.gpus))
            })?,
        };
        let placement = match (row.az.is_empty(), row.domain.is_empty()) {
            (true, true) => Placement::Any,
            (false, true) => {
                if !azs.contains(&row.az) {
                    return Err(DemandError::Impossible {
                        row: row.id.clone(),
                        reason: format!(
                            "AZ {:?} is not served by shard {shard} (its domains cover {:?})",
                            row.az, azs
                        ),
                    });
                }
                Placement::Az(row.az.clone())
            }
            (true, false) => {
                DomainKey::parse(&row.domain).map_err(|e| DemandError::Invalid(e.to_string()))?;
                if !held.domains.contains(&row.domain) {
                    return Err(DemandError::Impossible {
                        row: row.id.clone(),
                        reason: format!("domain {:?} does not belong to shard {shard}", row.domain),
                    });
                }
                Placement::Domain(row.domain.clone())
            }
            (false, false) => {
                return Err(DemandError::Invalid(format!(
                    "row {:?}: give an AZ or a domain, not both",
                    row.id
                )));
            }
        };
        needs.push(Need {
            id: format!("{}/{}", request.cluster, row.id),
            cluster: request.cluster.clone(),
            count: row.count,
            resources,
            priority: row.priority,
            placement,
        });
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Assignments {
        Assignments {
            domains: BTreeSet::from(["zone=az-a/rack=1".to_string()]),
            clusters: BTreeSet::from(["c1".to_string()]),
            ..Assignments::default()
        }
    }

    fn row(id: &str, cpu: i64) -> pb::DemandRow {
        pb::DemandRow {
            id: id.into(),
            count: 2,
            resources: Some(pb::ResourceSpec {
                cpu_millis: cpu,
                memory_mib: 1,
                gpus: 0,
            }),
            priority: 0,
            az: String::new(),
            domain: String::new(),
        }
    }

    fn submit(rows: Vec<pb::DemandRow>) -> pb::SubmitDemandRequest {
        pb::SubmitDemandRequest {
            cluster: "c1".into(),
            rows,
        }
    }

    #[test]
    fn good_demand_becomes_needs() {
        let needs = validate("s1", &submit(vec![row("web", 500)]), &held()).expect("valid");
        assert_eq!(needs[0].id, "c1/web");
        assert_eq!(needs[0].resources.cpu_millis, 500);
    }

    #[test]
    fn bad_demand_is_refused_with_the_reason() {
        let e = validate("s1", &submit(vec![row("web", -1)]), &held()).unwrap_err();
        assert!(e.to_string().contains("must not be negative"), "{e}");
        let mut other = submit(vec![row("web", 1)]);
        other.cluster = "c9".into();
        assert!(matches!(
            validate("s1", &other, &held()),
            Err(DemandError::NotBound { .. })
        ));
        let mut r = row("web", 1);
        r.az = "az-z".into();
        assert!(matches!(
            validate("s1", &submit(vec![r]), &held()),
            Err(DemandError::Impossible { .. })
        ));
        let mut r = row("web", 1);
        r.domain = "zone=az-b/rack=1".into();
        assert!(matches!(
            validate("s1", &submit(vec![r]), &held()),
            Err(DemandError::Impossible { .. })
        ));
        let too_many = (0..=MAX_ROWS).map(|n| row(&format!("r{n}"), 1)).collect();
        assert!(
            validate("s1", &submit(too_many), &held())
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        assert!(validate("s1", &submit(vec![row("a", 1), row("a", 1)]), &held()).is_err());
    }
}

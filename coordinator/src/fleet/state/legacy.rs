//! The layout of the fleet state in snapshots and archives written before grants (ADR 0016):
//! `BLSTSNP1`, `BLSTSNP2` and JSON. Domains held only their owner and quotas no slice-table
//! grant. Read once, converted, never written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dedup::Dedup;
use super::records::{DomainRow, ProviderRecord, QuotaRecord, ShardRecord};
use super::{FleetState, Revision};
use crate::fleet::names::Name;

/// A quota before slice tables had grants.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub(super) struct LegacyQuotaRecord {
    provider: String,
    region: String,
    total: u64,
    slices: BTreeMap<String, u64>,
}

/// [`FleetState`] before grants, field for field (postcard has no field names: the order is
/// the format).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(super) struct LegacyFleetState {
    revision: Revision,
    #[serde(default)]
    restore_epoch: u64,
    #[serde(default)]
    kv: crate::kv::KvStore,
    shards: BTreeMap<String, ShardRecord>,
    domains: BTreeMap<Name, Name>,
    bindings: BTreeMap<Name, Name>,
    quotas: BTreeMap<String, BTreeMap<String, LegacyQuotaRecord>>,
    providers: BTreeMap<String, ProviderRecord>,
    pub(super) dedup: Dedup,
    #[serde(default)]
    join_tokens: crate::fleet::tokens::JoinTokens,
}

impl LegacyFleetState {
    /// The state it describes. Nothing before this format presented grants to a provider, so
    /// every domain and slice table is granted at the archived revision: the same on every
    /// replica that reads these bytes, and below every revision written after.
    pub(super) fn upgrade(self) -> FleetState {
        let granted = self.revision;
        FleetState {
            revision: self.revision,
            restore_epoch: self.restore_epoch,
            kv: self.kv,
            shards: self.shards,
            domains: self
                .domains
                .into_iter()
                .map(|(domain, shard)| (domain, DomainRow { shard, granted }))
                .collect(),
            bindings: self.bindings,
            quotas: self
                .quotas
                .into_iter()
                .map(|(provider, regions)| {
                    let regions = regions
                        .into_iter()
                        .map(|(region, q)| {
                            let record = QuotaRecord {
                                provider: q.provider,
                                region: q.region,
                                total: q.total,
                                slices: q.slices,
                                granted,
                            };
                            (region, record)
                        })
                        .collect();
                    (provider, regions)
                })
                .collect(),
            providers: self.providers,
            dedup: self.dedup,
            join_tokens: self.join_tokens,
            ..FleetState::default()
        }
    }

    /// The old layout of `state` (tests write old snapshots with it).
    #[cfg(test)]
    pub(super) fn downgrade(state: &FleetState) -> LegacyFleetState {
        LegacyFleetState {
            revision: state.revision,
            restore_epoch: state.restore_epoch,
            kv: state.kv.clone(),
            shards: state.shards.clone(),
            domains: state
                .domains
                .iter()
                .map(|(d, row)| (d.clone(), row.shard.clone()))
                .collect(),
            bindings: state.bindings.clone(),
            quotas: state
                .quotas
                .iter()
                .map(|(p, regions)| {
                    let regions = regions
                        .iter()
                        .map(|(r, q)| {
                            let record = LegacyQuotaRecord {
                                provider: q.provider.clone(),
                                region: q.region.clone(),
                                total: q.total,
                                slices: q.slices.clone(),
                            };
                            (r.clone(), record)
                        })
                        .collect();
                    (p.clone(), regions)
                })
                .collect(),
            providers: state.providers.clone(),
            dedup: state.dedup.clone(),
            join_tokens: state.join_tokens.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetCommand;
    use crate::fleet::state::SNAPSHOT_MAGIC_V2;

    #[test]
    fn snapshots_without_grants_decode_with_every_grant_at_their_revision() {
        let mut s = FleetState::new();
        s.apply(&FleetCommand::RegisterShard {
            id: "s1".into(),
            address: "a:1".into(),
            az: "az-a".into(),
            now_ms: 0,
            lease_ttl_ms: 1,
        })
        .expect("register");
        s.apply(&FleetCommand::AssignDomains {
            assignments: vec![("z=1".into(), "s1".into())],
            allow_move: false,
        })
        .expect("assign");
        s.apply(&FleetCommand::SetProvider {
            name: "p".into(),
            endpoint: "grpc://127.0.0.1:1".into(),
            region: "r".into(),
            capacity_types: vec![],
        })
        .expect("provider");
        s.apply(&FleetCommand::SetQuota {
            provider: "p".into(),
            region: "r".into(),
            total: 10,
            slices: BTreeMap::from([("s1".to_string(), 4)]),
        })
        .expect("quota");
        s.apply(&FleetCommand::BindCluster {
            cluster: "c1".into(),
            shard: "s1".into(),
        })
        .expect("bind");
        let archived = s.revision();
        let mut v2 = SNAPSHOT_MAGIC_V2.to_vec();
        postcard::to_io(&LegacyFleetState::downgrade(&s), &mut v2).expect("postcard");
        postcard::to_io(&s.dedup.clock, &mut v2).expect("postcard");
        let read = FleetState::decode(&v2).expect("a BLSTSNP2 snapshot decodes");
        assert_eq!(read.revision(), archived);
        assert_eq!(read.domain_owner("z=1"), Some("s1"));
        assert_eq!(read.domain_row("z=1").map(|r| r.granted), Some(archived));
        let quota = read.quota("p", "r").expect("quota");
        assert_eq!((quota.slices["s1"], quota.granted), (4, archived));
        assert_eq!(read.binding("c1"), Some("s1"));
        assert_eq!(read.domains_of("s1"), vec!["z=1"]);
        // And it writes the current format, which reads back the same.
        let again = FleetState::decode(&read.encode()).expect("v3 decodes");
        assert_eq!(again, read);
    }
}

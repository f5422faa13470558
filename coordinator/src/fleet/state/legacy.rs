//! The layouts of the fleet state in snapshots and archives written before every grant
//! existed (ADR 0016): `BLSTSNP1`, `BLSTSNP2` and JSON (no grants at all: domains held only
//! their owner, quotas no slice-table grant), and `BLSTSNP3` (domain and slice-table grants,
//! no cluster grants). Read once, converted, never written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dedup::Dedup;
use super::records::{BindingRow, DomainRow, ProviderRecord, QuotaRecord, ShardRecord};
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

/// [`FleetState`] in an older layout, field for field (postcard has no field names: the order
/// is the format), generic over how a domain row and a quota looked then.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(super) struct OlderFleetState<D, Q> {
    revision: Revision,
    #[serde(default)]
    restore_epoch: u64,
    #[serde(default)]
    kv: crate::kv::KvStore,
    shards: BTreeMap<String, ShardRecord>,
    domains: BTreeMap<Name, D>,
    bindings: BTreeMap<Name, Name>,
    quotas: BTreeMap<String, BTreeMap<String, Q>>,
    providers: BTreeMap<String, ProviderRecord>,
    pub(super) dedup: Dedup,
    #[serde(default)]
    join_tokens: crate::fleet::tokens::JoinTokens,
}

/// Before any grant (`BLSTSNP1`, `BLSTSNP2`, JSON).
pub(super) type LegacyFleetState = OlderFleetState<Name, LegacyQuotaRecord>;

/// With domain and slice-table grants, before cluster grants (`BLSTSNP3`).
pub(super) type GrantedFleetState = OlderFleetState<DomainRow, QuotaRecord>;

/// A row of an older layout, completed with a grant where it had none.
pub(super) trait Upgrade<T> {
    fn upgrade(self, granted: Revision) -> T;
}

impl Upgrade<DomainRow> for Name {
    fn upgrade(self, granted: Revision) -> DomainRow {
        DomainRow {
            shard: self,
            granted,
        }
    }
}

impl Upgrade<DomainRow> for DomainRow {
    fn upgrade(self, _: Revision) -> DomainRow {
        self
    }
}

impl Upgrade<QuotaRecord> for LegacyQuotaRecord {
    fn upgrade(self, granted: Revision) -> QuotaRecord {
        QuotaRecord {
            provider: self.provider,
            region: self.region,
            total: self.total,
            slices: self.slices,
            granted,
        }
    }
}

impl Upgrade<QuotaRecord> for QuotaRecord {
    fn upgrade(self, _: Revision) -> QuotaRecord {
        self
    }
}

impl<D: Upgrade<DomainRow>, Q: Upgrade<QuotaRecord>> OlderFleetState<D, Q> {
    /// The state it describes. A grant the layout did not have is the archived revision:
    /// nothing before the layout presented it to a provider, it is the same on every replica
    /// that reads these bytes, and it is below every revision written after.
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
                .map(|(domain, row)| (domain, row.upgrade(granted)))
                .collect(),
            bindings: self
                .bindings
                .into_iter()
                .map(|(cluster, shard)| (cluster, BindingRow { shard, granted }))
                .collect(),
            quotas: self
                .quotas
                .into_iter()
                .map(|(provider, regions)| {
                    let regions = regions
                        .into_iter()
                        .map(|(region, q)| (region, q.upgrade(granted)))
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
}

impl LegacyFleetState {
    /// The layout before any grant (tests write old snapshots with it).
    #[cfg(test)]
    pub(super) fn without_grants(state: &FleetState) -> Self {
        Self::downgrade(
            state,
            |row| row.shard.clone(),
            |q| LegacyQuotaRecord {
                provider: q.provider.clone(),
                region: q.region.clone(),
                total: q.total,
                slices: q.slices.clone(),
            },
        )
    }
}

impl<D, Q> OlderFleetState<D, Q> {
    /// The old layout of `state` (tests write old snapshots with it).
    #[cfg(test)]
    pub(super) fn downgrade(
        state: &FleetState,
        domain: impl Fn(&DomainRow) -> D,
        quota: impl Fn(&QuotaRecord) -> Q,
    ) -> Self {
        OlderFleetState {
            revision: state.revision,
            restore_epoch: state.restore_epoch,
            kv: state.kv.clone(),
            shards: state.shards.clone(),
            domains: state
                .domains
                .iter()
                .map(|(d, row)| (Name::from(d), domain(row)))
                .collect(),
            bindings: state
                .bindings
                .iter()
                .map(|(c, row)| (Name::from(c), row.shard.clone()))
                .collect(),
            quotas: state
                .quotas
                .iter()
                .map(|(p, regions)| {
                    let regions = regions.iter().map(|(r, q)| (r.clone(), quota(q))).collect();
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
    use crate::fleet::state::{SNAPSHOT_MAGIC_V2, SNAPSHOT_MAGIC_V3};

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
        postcard::to_io(&LegacyFleetState::without_grants(&s), &mut v2).expect("postcard");
        postcard::to_io(&s.dedup.clock(), &mut v2).expect("postcard");
        let read = FleetState::decode(&v2).expect("a BLSTSNP2 snapshot decodes");
        assert_eq!(read.revision(), archived);
        assert_eq!(read.domain_owner("z=1"), Some("s1"));
        assert_eq!(read.domain_row("z=1").map(|r| r.granted), Some(archived));
        let quota = read.quota("p", "r").expect("quota");
        assert_eq!((quota.slices["s1"], quota.granted), (4, archived));
        assert_eq!(read.binding("c1"), Some("s1"));
        assert_eq!(read.binding_row("c1").map(|r| r.granted), Some(archived));
        assert_eq!(read.domains_of("s1"), vec!["z=1"]);
        // And it writes the current format, which reads back the same.
        let again = FleetState::decode(&read.encode()).expect("the current format decodes");
        assert_eq!(again, read);
    }

    #[test]
    fn snapshots_without_cluster_grants_keep_the_other_grants() {
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
        let domain_granted = s.revision();
        s.apply(&FleetCommand::BindCluster {
            cluster: "c1".into(),
            shard: "s1".into(),
        })
        .expect("bind");
        s.apply(&FleetCommand::BindCluster {
            cluster: "c2".into(),
            shard: "s1".into(),
        })
        .expect("bind");
        let archived = s.revision();
        let mut v3 = SNAPSHOT_MAGIC_V3.to_vec();
        let older = GrantedFleetState::downgrade(&s, DomainRow::clone, QuotaRecord::clone);
        postcard::to_io(&older, &mut v3).expect("postcard");
        postcard::to_io(&s.dedup.clock(), &mut v3).expect("postcard");
        let read = FleetState::decode(&v3).expect("a BLSTSNP3 snapshot decodes");
        assert_eq!(read.revision(), archived);
        assert_eq!(
            read.domain_row("z=1").map(|r| r.granted),
            Some(domain_granted)
        );
        for cluster in ["c1", "c2"] {
            let row = read.binding_row(cluster).expect("bound");
            assert_eq!((&*row.shard, row.granted), ("s1", archived));
        }
        let again = FleetState::decode(&read.encode()).expect("the current format decodes");
        assert_eq!(again, read);
    }
}

//! temporary stand-in while the real fleet module is written (removed before commit)
#![allow(missing_docs, dead_code, unused)]
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
pub type Revision = u64;
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ShardStatus {
    Active,
    Draining,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    pub id: String,
    pub address: String,
    pub az: String,
    pub registered_at_ms: u64,
    pub lease_expires_at_ms: u64,
    pub status: ShardStatus,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct QuotaRecord {
    pub provider: String,
    pub region: String,
    pub total: u64,
    pub slices: BTreeMap<String, u64>,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    pub name: String,
    pub endpoint: String,
    pub region: String,
    pub capacity_types: Vec<String>,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FleetCommand {
    RegisterShard {
        id: String,
        address: String,
        az: String,
        now_ms: u64,
        lease_ttl_ms: u64,
    },
    DrainShard {
        id: String,
    },
    ActivateShard {
        id: String,
    },
    RemoveShard {
        id: String,
    },
    AssignDomains {
        assignments: Vec<(String, String)>,
        allow_move: bool,
    },
    UnassignDomains {
        domains: Vec<String>,
    },
    BindCluster {
        cluster: String,
        shard: String,
    },
    MoveCluster {
        cluster: String,
        shard: String,
    },
    UnbindCluster {
        cluster: String,
    },
    SetQuota {
        provider: String,
        region: String,
        total: u64,
        slices: BTreeMap<String, u64>,
    },
    SetQuotaSlices {
        provider: String,
        region: String,
        slices: BTreeMap<String, u64>,
    },
    DeleteQuota {
        provider: String,
        region: String,
    },
    SetProvider {
        name: String,
        endpoint: String,
        region: String,
        capacity_types: Vec<String>,
    },
    RemoveProvider {
        name: String,
    },
    Batch {
        commands: Vec<FleetCommand>,
    },
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("x {0}")]
    Invalid(String),
}
impl FleetError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
}
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub revision: Revision,
    pub changed: bool,
}
pub struct FleetCounts {
    pub shards: usize,
    pub domains: usize,
    pub bindings: usize,
    pub quotas: usize,
    pub providers: usize,
}
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetState {
    revision: u64,
    shards: BTreeMap<String, ShardRecord>,
    domains: BTreeMap<String, String>,
    bindings: BTreeMap<String, String>,
    providers: BTreeMap<String, ProviderRecord>,
    quotas: BTreeMap<String, BTreeMap<String, QuotaRecord>>,
}
impl FleetState {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn revision(&self) -> Revision {
        self.revision
    }
    pub fn validate_command(cmd: &FleetCommand) -> Result<(), FleetError> {
        Ok(())
    }
    pub fn apply(&mut self, cmd: &FleetCommand) -> Result<Applied, FleetError> {
        todo!()
    }
    pub fn apply_request(
        &mut self,
        request_id: Option<&str>,
        cmd: &FleetCommand,
    ) -> Result<Applied, FleetError> {
        self.revision += 1;
        if let FleetCommand::AssignDomains { assignments, .. } = cmd {
            for (d, s) in assignments {
                self.domains.insert(d.clone(), s.clone());
            }
        }
        Ok(Applied {
            revision: self.revision,
            changed: true,
        })
    }
    pub fn shards(&self) -> impl Iterator<Item = &ShardRecord> {
        self.shards.values()
    }
    pub fn shard(&self, id: &str) -> Option<&ShardRecord> {
        self.shards.get(id)
    }
    pub fn domains(&self) -> impl Iterator<Item = (&str, &str)> {
        self.domains.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }
    pub fn domains_of(&self, shard: &str) -> Vec<&str> {
        vec![]
    }
    pub fn domain_owner(&self, domain: &str) -> Option<&str> {
        None
    }
    pub fn bindings(&self) -> impl Iterator<Item = (&str, &str)> {
        self.bindings.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }
    pub fn binding(&self, cluster: &str) -> Option<&str> {
        None
    }
    pub fn quotas(&self) -> impl Iterator<Item = &QuotaRecord> {
        self.quotas.values().flat_map(|m| m.values())
    }
    pub fn quota(&self, provider: &str, region: &str) -> Option<&QuotaRecord> {
        None
    }
    pub fn providers(&self) -> impl Iterator<Item = &ProviderRecord> {
        self.providers.values()
    }
    pub fn counts(&self) -> FleetCounts {
        FleetCounts {
            shards: self.shards.len(),
            domains: self.domains.len(),
            bindings: 0,
            quotas: 0,
            providers: 0,
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap()
    }
    pub fn decode(bytes: &[u8]) -> Result<FleetState, FleetError> {
        serde_json::from_slice(bytes).map_err(|e| FleetError::Invalid(e.to_string()))
    }
}

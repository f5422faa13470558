//! Who this replica is and which cluster it belongs to: bootstrap, join or restart, each
//! checked against what the data dir already holds.

use super::{NodeConfig, NodeError};

use std::sync::Arc;
use std::time::Duration;

use ballast_protocol::client::{BallastClient, ClientConfig};
use ballast_protocol::pb;

use crate::log::member::NodeId;
use crate::log::raft::data_dir::{DataDir, META_CLUSTER_ID, META_NODE_ID, META_UNFINISHED_REWRITE};
use ballast_tls::ClientTls;

/// Refuses a data dir a crash left halfway through a restore or `--force-new-cluster`.
pub(super) fn check_finished_rewrite(
    config: &NodeConfig,
    store: &DataDir,
) -> Result<(), NodeError> {
    match store.read_meta::<String>(META_UNFINISHED_REWRITE)? {
        Some(what) => Err(NodeError::Identity {
            dir: config.data_dir.display().to_string(),
            reason: format!(
                "it holds an interrupted {what}, so its contents are incomplete; restore it \
                 again (`ballastctl dr restore --force ...`), or delete it and join the cluster \
                 with a fresh data dir"
            ),
        }),
        None => Ok(()),
    }
}

/// Refuses a data dir that belongs to another replica id.
pub(super) fn check_replica_id(config: &NodeConfig, store: &DataDir) -> Result<(), NodeError> {
    match store.read_meta::<NodeId>(META_NODE_ID)? {
        Some(stored) if stored != config.id => Err(NodeError::Identity {
            dir: config.data_dir.display().to_string(),
            reason: format!("it holds replica {stored}, not replica {}", config.id),
        }),
        _ => Ok(()),
    }
}

/// Records this replica's id and its cluster id in a fresh data dir.
pub(super) fn stamp_identity(
    config: &NodeConfig,
    store: &DataDir,
    cluster_id: &str,
) -> Result<(), NodeError> {
    store.write_meta(META_NODE_ID, &config.id, false)?;
    store.write_meta(META_CLUSTER_ID, &cluster_id, true)?;
    Ok(())
}

/// Settles which cluster this data dir belongs to, creating or learning the id as needed.
pub(super) async fn cluster_identity(
    config: &NodeConfig,
    store: &DataDir,
    tls: Option<Arc<ClientTls>>,
) -> Result<String, NodeError> {
    check_replica_id(config, store)?;
    let dir = config.data_dir.display().to_string();
    if let Some(id) = store.read_meta::<String>(META_CLUSTER_ID)? {
        return Ok(id);
    }
    let cluster_id = if config.bootstrap {
        uuid::Uuid::new_v4().to_string()
    } else if !config.join.is_empty() {
        learn_cluster_id(&config.join, tls).await?
    } else {
        return Err(NodeError::Config(format!(
            "data dir {dir} is empty: pass --bootstrap to start a new cluster or --join ADDR to join one"
        )));
    };
    stamp_identity(config, store, &cluster_id)?;
    Ok(cluster_id)
}

pub(super) async fn learn_cluster_id(
    join: &[String],
    tls: Option<Arc<ClientTls>>,
) -> Result<String, NodeError> {
    let mut client_config = ClientConfig::new(join.to_vec());
    client_config.tls = tls;
    client_config.retry_budget = Duration::from_secs(60);
    let client = BallastClient::new(client_config).map_err(|e| NodeError::Join {
        through: join.join(","),
        reason: e.to_string(),
    })?;
    let status = client
        .cluster(|mut c, req| async move {
            c.status(req.wrap(pb::StatusRequest { options: None }))
                .await
        })
        .await
        .map_err(|e| NodeError::Join {
            through: join.join(","),
            reason: e.to_string(),
        })?;
    status
        .header
        .map(|h| h.cluster_id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| NodeError::Join {
            through: join.join(","),
            reason: "the answer carried no cluster id".into(),
        })
}

//! `ballast-coord restore`: offline work on a data dir, done by the replica binary (which owns
//! the data-dir format) rather than by the operator CLI — as etcd keeps offline restores in
//! `etcdutl`, out of `etcdctl`. `ballastctl dr restore` runs this command.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ballast_dr::{Key, Progress};
use ballast_protocol::validate::{validate_address, validate_id};
use clap::Parser;
use serde_json::json;

use crate::log::member::ReplicaNode;
use crate::node::RESTORE_BUMP;
use crate::restore::{Archived, restore_into};

/// Restores an archive into a data dir for a new single-voter cluster (the others then join
/// with fresh data dirs). Every check happens before the data dir is touched; the state is
/// written into a staging dir and renamed into place last, so a restore that dies halfway
/// leaves the target as it was.
#[derive(Parser, Debug)]
#[command(name = "ballast-coord restore", version)]
pub struct RestoreArgs {
    /// Archive URL (`file:///dir/NAME`, `s3://bucket/prefix/NAME?...`).
    pub url: String,
    /// Data dir to create.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Replica id of the restored replica.
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Its AZ label.
    #[arg(long)]
    pub az: String,
    /// Address peers and clients will reach it at (as its --advertise/--listen).
    #[arg(long)]
    pub advertise: String,
    /// Replace a non-empty data dir.
    #[arg(long)]
    pub force: bool,
    /// File holding the 32-byte archive key (64 hex digits or raw bytes).
    #[arg(long, conflicts_with = "key_env")]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the archive key (64 hex digits).
    #[arg(long)]
    pub key_env: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Download progress on stderr, in tenths, when stderr is a terminal.
struct Tenths(std::sync::atomic::AtomicU64);

impl Progress for Tenths {
    fn update(&self, done: u64, total: u64) {
        let tenth = (done * 10).checked_div(total).unwrap_or(0);
        let last = self.0.swap(tenth, std::sync::atomic::Ordering::Relaxed);
        if tenth != last && std::io::stderr().is_terminal() {
            eprintln!("downloading: {}% of {total} bytes", tenth * 10);
        }
    }
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading data dir {}", dir.display())),
    }
}

/// Runs `ballast-coord restore`; the outcome as JSON, with a `message` for people.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<serde_json::Value> {
    let (id, az, advertise) = (args.id, args.az, args.advertise);
    let (url, data_dir) = (args.url, args.data_dir);
    if id == 0 {
        bail!("--id must be at least 1");
    }
    validate_id("az", &az)?;
    validate_address("advertise", &advertise)?;
    if !args.force && !is_empty_dir(&data_dir)? {
        bail!(
            "data dir {} is not empty; pass --force to replace it",
            data_dir.display()
        );
    }
    let key = match (&args.key_file, &args.key_env) {
        (Some(path), _) => Some(Key::from_file(path)?),
        (None, Some(var)) => Some(Key::from_env(var)?),
        (None, None) => None,
    };
    let progress = Tenths(std::sync::atomic::AtomicU64::new(0));
    let (archive, verified) = ballast_dr::verify_any(&url, key.as_ref(), true, &progress).await?;
    let manifest = verified.manifest;
    let Some(data) = verified.data.as_deref() else {
        bail!("verified archive without data");
    };
    let archived =
        Archived::of(&manifest, data).map_err(|e| anyhow::anyhow!("archive {archive} {e}"))?;
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let base = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "data".into());
    // Staging dirs of restores into this data dir that crashed: never renamed into place, so
    // nothing else uses them.
    let leftover = format!(".{base}.restoring-");
    for entry in std::fs::read_dir(parent)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&leftover) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let staging = parent.join(format!("{leftover}{}", std::process::id()));
    let node = ReplicaNode {
        address: advertise.clone(),
        az: az.clone(),
    };
    let restored = match restore_into(&staging, id, node, &archived, RESTORE_BUMP) {
        Ok(restored) => restored,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
    }
    std::fs::rename(&staging, &data_dir).with_context(|| {
        format!(
            "moving {} into place at {}",
            staging.display(),
            data_dir.display()
        )
    })?;
    let message = format!(
        "restored cluster {} from {} (archived revision {}) into {}: revision {}, restore epoch \
         {}.\nStart it: ballast-coord --id {id} --az {az} --listen {advertise} --data-dir {}\n\
         Then join the other replicas with fresh data dirs: ballast-coord --id N --az AZ \
         --listen ADDR --data-dir DIR --join {advertise}",
        manifest.cluster_id,
        archive,
        manifest.revision,
        data_dir.display(),
        restored.revision,
        restored.restore_epoch,
        data_dir.display()
    );
    Ok(json!({
        "archive": archive, "data_dir": data_dir, "cluster_id": manifest.cluster_id,
        "archived_revision": manifest.revision, "revision": restored.revision,
        "restore_epoch": restored.restore_epoch, "id": id, "message": message,
    }))
}

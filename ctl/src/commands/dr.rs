//! `ballastctl dr ...`: archive exports (through the leader) and, with no coordinator needed,
//! listing, verifying and restoring archives.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ballast_coordinator::log::member::ReplicaNode;
use ballast_coordinator::node::RESTORE_BUMP;
use ballast_coordinator::restore::{Archived, restore_into};
use ballast_dr::{ArchiveUrl, Destination, Key, Progress};
use ballast_protocol::pb;
use ballast_protocol::validate::{validate_address, validate_id};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::Context;
use crate::output::{Rendered, table};

/// Where the archive key comes from.
#[derive(Args, Debug)]
pub struct KeyArgs {
    /// File holding the 32-byte key (64 hex digits or raw bytes).
    #[arg(long, conflicts_with = "key_env")]
    key_file: Option<PathBuf>,
    /// Environment variable holding the key (64 hex digits).
    #[arg(long)]
    key_env: Option<String>,
}

impl KeyArgs {
    fn key(&self) -> anyhow::Result<Option<Key>> {
        Ok(match (&self.key_file, &self.key_env) {
            (Some(path), _) => Some(Key::from_file(path)?),
            (None, Some(var)) => Some(Key::from_env(var)?),
            (None, None) => None,
        })
    }
}

/// DR commands.
#[derive(Subcommand, Debug)]
pub enum DrCmd {
    /// Export the current state as an archive now (the leader does it).
    Export {
        /// Destination URL; default: the leader's --dr-destination.
        #[arg(long)]
        to: Option<String>,
    },
    /// List the archives at a destination (no coordinator needed).
    List {
        /// Destination URL (directory, file:// or s3://bucket/prefix).
        #[arg(long)]
        from: String,
    },
    /// Check an archive: manifest, size, checksum, and decryption when a key is given.
    Verify {
        /// Archive URL: <destination>/<archive name>.
        url: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Build a single-voter cluster's data dir from an archive; start `ballast-coord` on it,
    /// then join the other replicas with fresh data dirs.
    Restore {
        /// Archive URL: <destination>/<archive name>.
        url: String,
        /// Data dir to create (must be empty or absent unless --force).
        #[arg(long)]
        data_dir: PathBuf,
        /// Replica id of the restored replica.
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// Its AZ label.
        #[arg(long)]
        az: String,
        /// Address peers and clients will reach it at (as its --advertise/--listen).
        #[arg(long)]
        advertise: String,
        /// Replace a non-empty data dir.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// Draws transfers on stderr when it is a terminal.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(what: &str) -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading data dir {}", dir.display())),
    }
}

/// Runs a DR command.
pub async fn run(ctx: &Context, cmd: DrCmd) -> anyhow::Result<Rendered> {
    match cmd {
        DrCmd::Export { to } => {
            let destination = to.unwrap_or_default();
            let r = ctx
                .client
                .cluster(|mut c, req| {
                    let destination = destination.clone();
                    async move { c.export(req.wrap(pb::ExportRequest { destination })).await }
                })
                .await?;
            Ok(Rendered {
                json: json!({
                    "archive": r.archive_url, "name": r.name, "revision": r.revision,
                    "size_bytes": r.size_bytes, "checksum": r.checksum, "encrypted": r.encrypted,
                    "duration_ms": r.duration_ms, "pruned": r.pruned,
                }),
                human: format!(
                    "exported {} (revision {}, {} bytes{}, {} ms){}",
                    r.archive_url,
                    r.revision,
                    r.size_bytes,
                    if r.encrypted { ", encrypted" } else { "" },
                    r.duration_ms,
                    if r.pruned.is_empty() {
                        String::new()
                    } else {
                        format!("; retention removed {}", r.pruned.join(", "))
                    }
                ),
            })
        }
        DrCmd::List { from } => {
            let destination = Destination::parse(&from)?;
            let listed = ballast_dr::list(&destination).await?;
            let rows: Vec<Vec<String>> = listed
                .iter()
                .map(|l| match &l.manifest {
                    Ok(m) => vec![
                        l.name.clone(),
                        m.created_at.clone(),
                        m.revision.to_string(),
                        m.restore_epoch.to_string(),
                        m.size.to_string(),
                        match m.encryption {
                            ballast_dr::Encryption::None => "no".into(),
                            _ => "yes".into(),
                        },
                        m.cluster_id.clone(),
                    ],
                    Err(e) => vec![l.name.clone(), format!("unreadable: {e}")],
                })
                .collect();
            let json = json!(
                listed
                    .iter()
                    .map(|l| match &l.manifest {
                        Ok(m) => serde_json::to_value(m).unwrap_or_default(),
                        Err(e) => json!({"name": l.name, "error": e.to_string()}),
                    })
                    .collect::<Vec<_>>()
            );
            Ok(Rendered {
                json,
                human: table(
                    &[
                        "name",
                        "created",
                        "revision",
                        "epoch",
                        "bytes",
                        "encrypted",
                        "cluster",
                    ],
                    rows,
                ),
            })
        }
        DrCmd::Verify { url, key } => {
            let archive = ArchiveUrl::parse(&url)?;
            let key = key.key()?;
            let verified = {
                let bar = Bar::new("verifying");
                ballast_dr::verify(&archive, key.as_ref(), false, &bar).await?
            };
            let m = verified.manifest;
            let decrypted = verified.data.is_some();
            Ok(Rendered {
                json: json!({"archive": archive.url(), "ok": true, "decrypted": decrypted,
                             "manifest": serde_json::to_value(&m)?}),
                human: format!(
                    "{} is intact: revision {}, {} bytes, {}{}",
                    archive.url(),
                    m.revision,
                    m.size,
                    m.checksum,
                    match (&m.encryption, decrypted) {
                        (ballast_dr::Encryption::None, _) => String::new(),
                        (_, true) => ", decrypts with the given key".into(),
                        (_, false) => ", encrypted (give the key to check decryption)".into(),
                    }
                ),
            })
        }
        DrCmd::Restore {
            url,
            data_dir,
            id,
            az,
            advertise,
            force,
            key,
        } => {
            if id == 0 {
                bail!("--id must be at least 1");
            }
            validate_id("az", &az)?;
            validate_address("advertise", &advertise)?;
            // Every check happens before the data dir is touched.
            if !force && !is_empty_dir(&data_dir)? {
                bail!(
                    "data dir {} is not empty; pass --force to replace it",
                    data_dir.display()
                );
            }
            let archive = ArchiveUrl::parse(&url)?;
            let key = key.key()?;
            let verified = {
                let bar = Bar::new("downloading");
                ballast_dr::verify(&archive, key.as_ref(), true, &bar).await?
            };
            let manifest = verified.manifest;
            let archived = Archived::of(&manifest, verified.data.as_deref().unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("archive {} {e}", archive.url()))?;
            if verified.data.is_none() {
                bail!("verified archive without data");
            }
            let parent = data_dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let base = data_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "data".into());
            // Staging dirs of restores into this data dir that crashed: never renamed into
            // place, so nothing else uses them.
            let leftover = format!(".{base}.restoring-");
            for entry in std::fs::read_dir(parent)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&leftover) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            let staging = parent.join(format!("{leftover}{}", std::process::id()));
            let restored = restore_into(
                &staging,
                id,
                ReplicaNode {
                    address: advertise.clone(),
                    az: az.clone(),
                },
                &archived,
                RESTORE_BUMP,
            );
            let restored = match restored {
                Ok(r) => r,
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
            Ok(Rendered {
                json: json!({
                    "archive": archive.url(), "data_dir": data_dir, "cluster_id": manifest.cluster_id,
                    "archived_revision": manifest.revision, "revision": restored.revision,
                    "restore_epoch": restored.restore_epoch, "id": id,
                }),
                human: format!(
                    "restored cluster {} from {} (archived revision {}) into {}: revision {}, \
                     restore epoch {}.\nStart it: ballast-coord --id {id} --az {az} --listen {advertise} \
                     --data-dir {}\nThen join the other replicas with fresh data dirs: \
                     ballast-coord --id N --az AZ --listen ADDR --data-dir DIR --join {advertise}",
                    manifest.cluster_id,
                    archive.url(),
                    manifest.revision,
                    data_dir.display(),
                    restored.revision,
                    restored.restore_epoch,
                    data_dir.display()
                ),
            })
        }
    }
}

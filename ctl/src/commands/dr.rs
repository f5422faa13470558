//! `ballastctl dr ...`: archive exports (through the leader) and, with no coordinator needed,
//! listing, verifying and restoring archives.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use ballast_dr::{Destination, Key, Progress};
use ballast_protocol::pb;

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
        /// Archive URL (<destination>/<archive name>), or the path of a snapshot file that
        /// `etcdctl snapshot save` took from a replica.
        url: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Build a single-voter cluster's data dir from an archive; start `ballast-coord` on it,
    /// then join the other replicas with fresh data dirs.
    Restore {
        /// Archive URL (<destination>/<archive name>), or the path of a snapshot file that
        /// `etcdctl snapshot save` took from a replica.
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

/// The replica binary that does offline data-dir work (`ballast-coord restore`): `$BALLAST_COORD`,
/// else `ballast-coord` next to this program, else on the `PATH`.
fn replica_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("BALLAST_COORD") {
        return PathBuf::from(path);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("ballast-coord")));
    match sibling {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("ballast-coord"),
    }
}

/// Runs the replica binary with `args` (which ask it for JSON) and returns what it printed;
/// its refusal becomes this command's.
fn run_replica_binary(args: &[std::ffi::OsString]) -> anyhow::Result<serde_json::Value> {
    let binary = replica_binary();
    let output = std::process::Command::new(&binary)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "restoring is done by the replica binary (`ballast-coord restore`), and {} could \
                 not be run; install ballast-coord next to ballastctl or on the PATH, or set \
                 BALLAST_COORD to its path",
                binary.display()
            )
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no reason given")
            .trim_start_matches("error: ");
        bail!("{reason}");
    }
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "{} restore printed no JSON: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stdout)
        )
    })
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
            let key = key.key()?;
            let (archive, verified) = {
                let bar = Bar::new("verifying");
                ballast_dr::verify_any(&url, key.as_ref(), false, &bar).await?
            };
            let m = verified.manifest;
            let decrypted = verified.data.is_some();
            Ok(Rendered {
                json: json!({"archive": archive, "ok": true, "decrypted": decrypted,
                             "manifest": serde_json::to_value(&m)?}),
                human: format!(
                    "{} is intact: revision {}, {} bytes, {}{}",
                    archive,
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
            let mut args: Vec<std::ffi::OsString> = vec![
                "restore".into(),
                url.into(),
                "--data-dir".into(),
                data_dir.into(),
                "--id".into(),
                id.to_string().into(),
                "--az".into(),
                az.into(),
                "--advertise".into(),
                advertise.into(),
                "--json".into(),
            ];
            if force {
                args.push("--force".into());
            }
            if let Some(file) = key.key_file {
                args.extend(["--key-file".into(), file.into()]);
            }
            if let Some(var) = key.key_env {
                args.extend(["--key-env".into(), var.into()]);
            }
            let done = run_replica_binary(&args)?;
            Ok(Rendered {
                human: done["message"].as_str().unwrap_or_default().to_string(),
                json: done,
            })
        }
    }
}

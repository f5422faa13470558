//! Archive round trips against a local directory and a real S3-protocol server (moto, started
//! on loopback), with and without encryption; retention; and every refusal.

use std::path::Path;
use std::time::Duration;

use ballast_dr::{
    ArchiveInput, ArchiveUrl, Destination, DrError, Key, NoProgress, Retention, export, list,
    retain, verify,
};
use ballast_testkit::S3Server;

fn input(revision: u64, size: usize) -> ArchiveInput {
    ArchiveInput {
        cluster_id: "c-test".into(),
        term: 3,
        log_index: 40 + revision,
        revision,
        restore_epoch: 0,
        payload: "test".into(),
        data: (0..size)
            .map(|i| (i * 7 + revision as usize) as u8)
            .collect(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Exports, lists, verifies and reads back; returns the archive URL.
async fn round_trip(destination: &Destination, key: Option<&Key>, size: usize) -> String {
    let sent = input(7, size);
    let manifest = export(destination, &sent, key, &NoProgress)
        .await
        .expect("export");
    assert_eq!(manifest.revision, 7);
    assert_eq!(manifest.plain_size, size as u64);
    let listed = list(destination).await.expect("list");
    assert!(listed.iter().any(|l| l.name == manifest.name));
    let url = destination.archive_url(&manifest.name);
    let archive = ArchiveUrl::parse(&url).expect("archive url");
    let verified = verify(&archive, key, true, &NoProgress)
        .await
        .expect("verify");
    assert_eq!(verified.data.as_deref(), Some(&sent.data[..]));
    assert_eq!(verified.manifest, manifest);
    url
}

#[test]
fn local_round_trip_plain_and_encrypted() {
    let dir = tempfile::tempdir().expect("dir");
    let destination = Destination::parse(&dir.path().display().to_string()).expect("dest");
    let key = Key::from_bytes([9; 32]);
    runtime().block_on(async {
        round_trip(&destination, None, 1000).await;
        let url = round_trip(&destination, Some(&key), 3 << 20).await;
        // The manifest names the key by fingerprint only.
        let archive = ArchiveUrl::parse(&url).expect("url");
        let manifest_text =
            std::fs::read_to_string(dir.path().join(&archive.name).join("manifest.json"))
                .expect("manifest");
        assert!(manifest_text.contains(&key.id()));
        assert!(!manifest_text.contains(&"09".repeat(8)));
        // Without the key the stored bytes can still be checked, not read.
        let checked = verify(&archive, None, false, &NoProgress)
            .await
            .expect("checksum-only verify");
        assert!(checked.data.is_none());
    });
}

fn archive_dir(url: &str) -> std::path::PathBuf {
    Path::new(url).to_path_buf()
}

#[test]
fn damaged_archives_and_wrong_keys_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let destination = Destination::parse(&dir.path().display().to_string()).expect("dest");
    let key = Key::from_bytes([1; 32]);
    runtime().block_on(async {
        let check = |url: String, key: Option<Key>| async move {
            let archive = ArchiveUrl::parse(&url)?;
            verify(&archive, key.as_ref(), true, &NoProgress).await
        };
        // A flipped byte.
        let url = round_trip(&destination, None, 5000).await;
        let data = archive_dir(&url).join("data");
        let mut bytes = std::fs::read(&data).expect("read");
        bytes[100] ^= 0xff;
        std::fs::write(&data, &bytes).expect("write");
        let error = check(url.clone(), None).await.expect_err("flipped byte");
        assert!(matches!(error, DrError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("checksum"), "{error}");
        // Cut short.
        std::fs::write(&data, &bytes[..4000]).expect("write");
        let error = check(url.clone(), None).await.expect_err("truncated");
        assert!(error.to_string().contains("truncated"), "{error}");
        // A manifest from the future.
        let manifest = archive_dir(&url).join("manifest.json");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        std::fs::write(
            &manifest,
            text.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .expect("write");
        let error = check(url.clone(), None).await.expect_err("future format");
        assert!(
            matches!(error, DrError::UnknownFormat { found: 9, .. }),
            "{error}"
        );
        // Garbage manifest.
        std::fs::write(&manifest, b"{not json").expect("write");
        let error = check(url.clone(), None)
            .await
            .expect_err("garbage manifest");
        assert!(matches!(error, DrError::Corrupt { .. }), "{error}");
        // No archive there.
        let missing = format!("{}/0000000000000001-r1", dir.path().display());
        let error = check(missing, None).await.expect_err("missing");
        assert!(matches!(error, DrError::NotFound(_)), "{error}");

        // Encrypted: no key, the wrong key, a tampered ciphertext.
        let url = round_trip(&destination, Some(&key), 5000).await;
        let error = check(url.clone(), None).await.expect_err("no key");
        assert!(matches!(error, DrError::KeyRequired { .. }), "{error}");
        let error = check(url.clone(), Some(Key::from_bytes([2; 32])))
            .await
            .expect_err("wrong key");
        assert!(matches!(error, DrError::WrongKey { .. }), "{error}");
        assert!(!error.to_string().contains("0202"), "{error}");
    });
}

#[test]
fn retention_deletes_exactly_the_old_archives() {
    let dir = tempfile::tempdir().expect("dir");
    let destination = Destination::parse(&dir.path().display().to_string()).expect("dest");
    runtime().block_on(async {
        let mut names = Vec::new();
        for revision in 1..=5 {
            let manifest = export(&destination, &input(revision, 100), None, &NoProgress)
                .await
                .expect("export");
            names.push(manifest.name);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let deleted = retain(
            &destination,
            Retention {
                keep_last: Some(2),
                max_age: None,
            },
        )
        .await
        .expect("retain");
        let mut expected = names[..3].to_vec();
        expected.reverse();
        assert_eq!(deleted, expected);
        let left: Vec<String> = list(&destination)
            .await
            .expect("list")
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(left, names[3..].to_vec());
        // Everything older than zero: all but the newest go.
        let deleted = retain(
            &destination,
            Retention {
                keep_last: None,
                max_age: Some(Duration::ZERO),
            },
        )
        .await
        .expect("retain");
        assert_eq!(deleted, vec![names[3].clone()]);
    });
}

#[test]
fn s3_round_trip_multipart_encryption_and_retention() {
    S3Server::set_credentials();
    let server = S3Server::start("ballast-dr");
    let destination = Destination::parse(&server.url("cluster-a")).expect("s3 destination");
    let key = Key::from_bytes([5; 32]);
    runtime().block_on(async {
        round_trip(&destination, None, 2000).await;
        // Above the 8 MiB part size: a multipart upload.
        round_trip(&destination, Some(&key), 9 << 20).await;
        let deleted = retain(
            &destination,
            Retention {
                keep_last: Some(1),
                max_age: None,
            },
        )
        .await
        .expect("retain");
        assert_eq!(deleted.len(), 1);
        assert_eq!(list(&destination).await.expect("list").len(), 1);
        // A destination that does not exist is a clear storage error.
        let elsewhere =
            Destination::parse(&server.url("x").replace("ballast-dr", "no-such")).expect("parse");
        let error = list(&elsewhere).await.expect_err("missing bucket");
        assert!(error.to_string().contains("object storage"), "{error}");
    });
}

#[test]
fn bad_destination_urls_are_refused() {
    for (url, needle) in [
        ("", "empty"),
        ("gs://bucket", "only local paths"),
        ("s3://", "no bucket"),
        ("s3://b/p?colour=blue", "unknown parameter"),
    ] {
        let error = Destination::parse(url).expect_err(url).to_string();
        assert!(error.contains(needle), "{url}: {error}");
    }
}

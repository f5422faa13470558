//! `--config FILE` for the replica binary: a TOML file alone starts a replica, BALLAST_*
//! variables and flags override it, and bad files are refused with the file and the field
//! named, before anything is created. Also the JSON log format (`BALLAST_LOG_FORMAT=json`).

use std::process::{Command, Stdio};
use std::time::Duration;

use ballast_testkit::{free_port, http_get, wait_for};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ballast-sim"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starts_from_a_toml_file_with_overrides() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, http) = (free_port(), free_port());
    let file = dir.path().join("coord.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\naz = \"az-a\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
             bootstrap = true\nhttp-listen = \"127.0.0.1:{http}\"\nheartbeat_ms = 50\n\
             election_min_ms = 300\nelection_max_ms = 600\n",
            dir.path().join("data").display()
        ),
    )
    .expect("writing the config");
    let mut child = sim()
        .args(["replica", "--config"])
        .arg(&file)
        .env("BALLAST_AZ", "az-z")
        .env("BALLAST_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a replica");
    let address = format!("127.0.0.1:{http}");
    let ready = wait_for(
        "the replica to be ready",
        Duration::from_secs(30),
        || async { http_get(&address, "/readyz").filter(|(code, _)| *code == 200) },
    )
    .await;
    assert!(ready.1.contains("replica 1"), "{}", ready.1);
    let (_, page) = http_get(&address, "/").expect("status page");
    assert!(
        page.contains("Ballast replica 1 <span class=\"muted\">(az-z, leader)"),
        "the environment overrides the file: {page}"
    );
    let _ = child.kill();
    let output = child.wait_with_output().expect("collecting the log");
    // BALLAST_LOG_FORMAT=json: one JSON object per line, fields at the top level.
    let log = String::from_utf8_lossy(&output.stderr);
    let serving = log
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .find(|event| event["message"] == "replica serving")
        .unwrap_or_else(|| panic!("no 'replica serving' event in {log}"));
    assert_eq!(serving["az"], "az-z");
    assert_eq!(serving["level"], "INFO");
}

#[test]
fn bad_config_files_are_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let run = |name: &str, body: &str| {
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            format!(
                "id = 1\naz = \"az-a\"\ndata_dir = \"{}\"\nbootstrap = true\n{body}",
                data.display()
            ),
        )
        .expect("writing the config");
        let out = sim()
            .args(["replica", "--config"])
            .arg(&file)
            .output()
            .expect("running ballast-sim replica");
        assert!(!out.status.success(), "{name} must be refused");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, message) = run("typo.toml", "hearbeat_ms = 80\n");
    assert_eq!(code, Some(2));
    assert!(message.contains("typo.toml"), "{message}");
    assert!(
        message.contains("field `hearbeat_ms`: unknown setting"),
        "{message}"
    );
    let (code, message) = run("type.toml", "heartbeat_ms = \"fast\"\n");
    assert_eq!(code, Some(2));
    assert!(
        message.contains("--heartbeat-ms") && message.contains("fast"),
        "{message}"
    );
    let (_, message) = run(
        "range.toml",
        "election_min_ms = 900\nelection_max_ms = 600\n",
    );
    assert!(message.contains("--election-min-ms (900)"), "{message}");
    let (code, message) = run("syntax.toml", "listen = [\n");
    assert_eq!(code, Some(2));
    assert!(message.contains("syntax.toml"), "{message}");
    assert!(
        !data.exists(),
        "nothing was created for a refused configuration"
    );
}

//! Property tests with hostile input (#8's fuzzing, run as ordinary tests): arbitrary and
//! corrupted bytes where the replica decodes untrusted data — protobuf commands, Raft wire
//! messages and log entries, snapshots, configuration files — never panic; and a refused
//! command leaves the fleet state byte-for-byte unchanged.

use std::time::Duration;

use ballast_coordinator::config::CoordArgs;
use ballast_coordinator::fleet::FleetRequest;
use ballast_coordinator::fleet::{FleetCommand, FleetState};
use ballast_coordinator::log::raft::types::Entry;
use ballast_coordinator::log::wire;
use ballast_coordinator::service::convert::to_fleet;
use ballast_protocol::pb;
use ballast_protocol::pb::command::Command as Wire;
use proptest::prelude::*;
use prost::Message;

/// Strings that stress validation: valid ids, empty, separators, unicode, control
/// characters, very long.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,12}",
        Just(String::new()),
        "zone=az-[a-c]/rack=r[0-9]",
        ".{0,40}",
        "[\\x00-\\x1f/=]{1,8}",
        Just("x".repeat(5_000)),
    ]
}

fn command() -> impl Strategy<Value = pb::Command> {
    let wire = prop_oneof![
        (hostile_text(), hostile_text(), hostile_text(), any::<u64>()).prop_map(
            |(id, address, az, lease_ms)| Wire::RegisterShard(pb::RegisterShard {
                id,
                address,
                az,
                lease_ttl_ms: lease_ms,
            })
        ),
        (
            prop::collection::vec((hostile_text(), hostile_text()), 0..6),
            any::<bool>()
        )
            .prop_map(
                |(pairs, allow_move)| Wire::AssignDomains(pb::AssignDomains {
                    assignments: pairs
                        .into_iter()
                        .map(|(domain, shard)| pb::DomainAssignment { domain, shard })
                        .collect(),
                    allow_move,
                })
            ),
        (hostile_text(), hostile_text())
            .prop_map(|(cluster, shard)| Wire::BindCluster(pb::BindCluster { cluster, shard })),
        (
            hostile_text(),
            hostile_text(),
            any::<u64>(),
            prop::collection::vec((hostile_text(), any::<u64>()), 0..4)
        )
            .prop_map(
                |(provider, region, total, slices)| Wire::SetQuota(pb::SetQuota {
                    provider,
                    region,
                    total,
                    slices: slices
                        .into_iter()
                        .map(|(shard, amount)| pb::QuotaSlice { shard, amount })
                        .collect(),
                })
            ),
        hostile_text().prop_map(|id| Wire::RemoveShard(pb::RemoveShard { id })),
        hostile_text().prop_map(|id| Wire::DrainShard(pb::DrainShard { id })),
    ];
    prop::option::of(wire).prop_map(|command| pb::Command { command })
}

/// A small fleet to aim commands at.
fn seeded() -> FleetState {
    let mut state = FleetState::new();
    for (id, az) in [("s1", "az-a"), ("s2", "az-b")] {
        state
            .apply(&FleetCommand::RegisterShard {
                id: id.into(),
                address: "127.0.0.1:7801".into(),
                az: az.into(),
                now_ms: 1,
                lease_ttl_ms: 10_000,
            })
            .expect("register");
    }
    state
        .apply(&FleetCommand::AssignDomains {
            assignments: vec![("zone=az-a/rack=r1".into(), "s1".into())],
            allow_move: false,
        })
        .expect("assign");
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn refused_commands_change_nothing(command in command(), wrap_in_batch in any::<bool>()) {
        let command = if wrap_in_batch {
            pb::Command { command: Some(Wire::Batch(pb::Batch { commands: vec![
                pb::Command { command: Some(Wire::DrainShard(pb::DrainShard { id: "s2".into() })) },
                command,
            ] })) }
        } else {
            command
        };
        let mut state = seeded();
        let before = state.encode();
        match to_fleet(Some(command), Duration::from_secs(10)) {
            Err(status) => prop_assert!(!status.message().is_empty()),
            Ok(fleet_command) => match state.apply(&fleet_command) {
                Err(error) => {
                    prop_assert!(!error.to_string().is_empty());
                    prop_assert_eq!(state.encode(), before, "a refusal changed the state");
                }
                Ok(_) => {
                    let restored = FleetState::decode(&state.encode()).expect("own snapshot");
                    prop_assert_eq!(restored, state);
                }
            },
        }
    }

    #[test]
    fn arbitrary_protobuf_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = pb::WriteRequest::decode(bytes.as_slice())
            && let Ok(command) = to_fleet(request.command, Duration::from_secs(10))
        {
            let mut state = seeded();
            let before = state.encode();
            if state.apply(&command).is_err() {
                prop_assert_eq!(state.encode(), before);
            }
        }
    }

    #[test]
    fn corrupted_snapshots_are_errors_not_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let good = seeded().encode();
        let mut bad = good.clone();
        for (at, byte) in flips {
            let i = at.index(bad.len());
            bad[i] ^= byte | 1;
        }
        let _ = FleetState::decode(&bad);
        let _ = FleetState::decode(&good[..cut.index(good.len())]);
        let mut json = serde_json::to_vec(&seeded()).expect("json");
        let i = cut.index(json.len());
        json[i] = b'{';
        let _ = FleetState::decode(&json);
    }

    #[test]
    fn arbitrary_raft_wire_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = wire::decode::<Entry>(&bytes);
        let _ = wire::decode::<FleetRequest>(&bytes);
        let _ = wire::decode::<openraft::raft::AppendEntriesRequest<ballast_coordinator::log::raft::types::TypeConfig>>(&bytes);
        let _ = wire::decode::<openraft::raft::VoteRequest<u64>>(&bytes);
    }

    #[test]
    fn arbitrary_config_files_never_panic(text in ".{0,200}", key in "[a-z_]{1,20}", value in ".{0,30}") {
        let dir = tempfile::tempdir().expect("temp dir");
        for body in [text, format!("{key} = {value}\n"), format!("{key} = \"{value}\"\n")] {
            let file = dir.path().join("c.toml");
            std::fs::write(&file, body).expect("write");
            let args = vec!["ballast-coord".into(), "--config".into(), file.into()];
            if let Ok(parsed) = ballast_settings::parse_from::<CoordArgs>(args) {
                let _ = parsed.into_config();
            }
        }
    }
}

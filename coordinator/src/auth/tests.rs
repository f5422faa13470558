use super::*;
use crate::kv::{Compare, CompareResult, CompareTarget, DeleteOp, KeyRange, PutOp, RangeOp, TxnOp};
use ballast_protocol::coordination::prefix_end;

fn run(store: &mut AuthStore, caller: Option<&Caller>, command: AuthCommand) {
    store
        .apply(caller, &command)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
}

fn user_add(name: &str) -> AuthCommand {
    AuthCommand::UserAdd {
        name: name.into(),
        password_hash: Some(format!("hash-of-{name}")),
    }
}

fn grant_role(user: &str, role: &str) -> AuthCommand {
    AuthCommand::UserGrantRole {
        user: user.into(),
        role: role.into(),
    }
}

fn grant(role: &str, access: Access, key: &str, range_end: &[u8]) -> AuthCommand {
    AuthCommand::RoleGrantPermission {
        role: role.into(),
        permission: Permission {
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
            access,
        },
    }
}

/// Auth on with root, `reader` (read on /app/ prefix) and `writer` (readwrite on /app/).
fn enabled_store() -> AuthStore {
    let mut store = AuthStore::default();
    for command in [
        user_add(ROOT),
        grant_role(ROOT, ROOT),
        user_add("reader"),
        user_add("writer"),
        AuthCommand::RoleAdd {
            name: "app-read".into(),
        },
        AuthCommand::RoleAdd {
            name: "app-write".into(),
        },
        grant("app-read", Access::Read, "/app/", &prefix_end(b"/app/")),
        grant(
            "app-write",
            Access::ReadWrite,
            "/app/",
            &prefix_end(b"/app/"),
        ),
        grant_role("reader", "app-read"),
        grant_role("writer", "app-write"),
        AuthCommand::Enable {
            secret: b"s".to_vec(),
        },
    ] {
        run(&mut store, None, command);
    }
    store
}

fn caller(store: &AuthStore, user: &str) -> Caller {
    Caller {
        user: user.into(),
        revision: store.revision(),
    }
}

fn put(key: &str) -> KvCommand {
    KvCommand::Put(PutOp {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

#[test]
fn enabling_needs_root_holding_the_root_role() {
    let mut store = AuthStore::default();
    let enable = AuthCommand::Enable {
        secret: b"s".to_vec(),
    };
    assert_eq!(store.apply(None, &enable), Err(AuthError::RootUserMissing));
    run(&mut store, None, user_add(ROOT));
    assert_eq!(store.apply(None, &enable), Err(AuthError::RootRoleMissing));
    // The root role needs no definition before it is granted, as in etcd.
    run(&mut store, None, grant_role(ROOT, ROOT));
    let before = store.revision();
    assert_eq!(store.apply(None, &enable), Ok(true));
    assert!(store.enabled());
    assert_eq!(store.secret(), b"s");
    assert_eq!(store.revision(), before + 1);
}

#[test]
fn once_on_only_a_current_administrator_changes_anything() {
    let mut store = enabled_store();
    let add = user_add("carol");
    assert_eq!(store.apply(None, &add), Err(AuthError::UserEmpty));
    let reader = caller(&store, "reader");
    assert_eq!(
        store.apply(Some(&reader), &add),
        Err(AuthError::PermissionDenied)
    );
    let stranger = caller(&store, "nobody");
    assert_eq!(
        store.apply(Some(&stranger), &add),
        Err(AuthError::PermissionDenied)
    );
    let root = caller(&store, ROOT);
    assert_eq!(store.apply(Some(&root), &add), Ok(true));
    // Credentials checked before that change are stale now.
    assert_eq!(
        store.apply(Some(&root), &user_add("dave")),
        Err(AuthError::OldRevision)
    );
    let root = caller(&store, ROOT);
    assert_eq!(
        store.apply(Some(&root), &add),
        Err(AuthError::UserAlreadyExists)
    );
}

#[test]
fn root_cannot_be_removed_while_auth_is_on() {
    let mut store = enabled_store();
    let root = caller(&store, ROOT);
    for command in [
        AuthCommand::UserDelete { name: ROOT.into() },
        AuthCommand::RoleDelete { name: ROOT.into() },
        AuthCommand::UserRevokeRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
    ] {
        assert_eq!(
            store.apply(Some(&root), &command),
            Err(AuthError::InvalidManagement),
            "{command:?}"
        );
    }
    run(&mut store, Some(&root), AuthCommand::Disable);
    assert!(!store.enabled());
    assert!(store.secret().is_empty());
    run(
        &mut store,
        None,
        AuthCommand::UserDelete { name: ROOT.into() },
    );
}

#[test]
fn management_errors_are_etcds() {
    let mut store = AuthStore::default();
    let cases = [
        (user_add(""), AuthError::UserEmpty),
        (
            AuthCommand::RoleAdd { name: "".into() },
            AuthError::RoleEmpty,
        ),
        (grant_role("ghost", "r"), AuthError::UserNotFound),
        (
            AuthCommand::UserDelete {
                name: "ghost".into(),
            },
            AuthError::UserNotFound,
        ),
        (
            AuthCommand::RoleDelete {
                name: "ghost".into(),
            },
            AuthError::RoleNotFound,
        ),
        (
            grant("ghost", Access::Read, "k", b""),
            AuthError::RoleNotFound,
        ),
    ];
    for (command, error) in cases {
        assert_eq!(store.apply(None, &command), Err(error), "{command:?}");
    }
    run(&mut store, None, user_add("u"));
    assert_eq!(
        store.apply(None, &grant_role("u", "missing")),
        Err(AuthError::RoleNotFound)
    );
    run(&mut store, None, AuthCommand::RoleAdd { name: "r".into() });
    assert_eq!(
        store.apply(
            None,
            &AuthCommand::UserRevokeRole {
                user: "u".into(),
                role: "r".into()
            }
        ),
        Err(AuthError::RoleNotGranted)
    );
    assert_eq!(
        store.apply(
            None,
            &AuthCommand::RoleRevokePermission {
                role: "r".into(),
                key: b"k".to_vec(),
                range_end: Vec::new()
            }
        ),
        Err(AuthError::PermissionNotGranted)
    );
    // Granting twice changes nothing; a grant on the same range replaces the access.
    run(&mut store, None, grant_role("u", "r"));
    assert_eq!(store.apply(None, &grant_role("u", "r")), Ok(false));
    run(&mut store, None, grant("r", Access::Read, "k", b""));
    run(&mut store, None, grant("r", Access::ReadWrite, "k", b""));
    run(&mut store, None, grant("r", Access::Write, "a", b""));
    let role = store.role("r").expect("role");
    assert_eq!(role.permissions.len(), 2);
    assert_eq!(role.permissions[0].key, b"a");
    assert_eq!(role.permissions[1].access, Access::ReadWrite);
    // Deleting a role takes it from its users.
    run(
        &mut store,
        None,
        AuthCommand::RoleDelete { name: "r".into() },
    );
    assert!(store.user("u").expect("user").roles.is_empty());
}

#[test]
fn kv_commands_need_the_access_they_use() {
    let store = enabled_store();
    let kv = KvStore::default();
    let reader = caller(&store, "reader");
    let writer = caller(&store, "writer");
    let root = caller(&store, ROOT);
    assert_eq!(
        store.check_kv(Some(&reader), &put("/app/a"), &kv),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(store.check_kv(Some(&writer), &put("/app/a"), &kv), Ok(()));
    assert_eq!(
        store.check_kv(Some(&writer), &put("/app-secrets/a"), &kv),
        Err(AuthError::PermissionDenied),
        "a prefix grant must not leak to a sibling prefix"
    );
    assert_eq!(store.check_kv(Some(&root), &put("/anything"), &kv), Ok(()));
    assert_eq!(
        store.check_kv(None, &put("/app/a"), &kv),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(
        store.check_read(Some(&reader), b"/app/", &prefix_end(b"/app/")),
        Ok(())
    );
    assert_eq!(
        store.check_read(Some(&reader), b"/app", &prefix_end(b"/app")),
        Err(AuthError::PermissionDenied)
    );
    // A delete of the whole prefix is a write of every key in it.
    let delete_all = KvCommand::Delete(DeleteOp {
        range: KeyRange {
            key: b"/app/".to_vec(),
            end: prefix_end(b"/app/"),
        },
        prev_kv: false,
    });
    assert_eq!(store.check_kv(Some(&writer), &delete_all, &kv), Ok(()));
    assert_eq!(
        store.check_kv(Some(&reader), &delete_all, &kv),
        Err(AuthError::PermissionDenied)
    );
}

#[test]
fn a_transaction_is_checked_in_both_branches_and_its_guards() {
    let store = enabled_store();
    let kv = KvStore::default();
    let writer = caller(&store, "writer");
    let op = |key: &str| {
        Op::Put(PutOp {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
    };
    let guard = |key: &str| Compare {
        range: KeyRange {
            key: key.as_bytes().to_vec(),
            end: Vec::new(),
        },
        target: CompareTarget::Version(0),
        result: CompareResult::Equal,
    };
    let txn = |compare: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>| {
        KvCommand::Txn(TxnOp {
            compare,
            success,
            failure,
        })
    };
    assert_eq!(
        store.check_kv(
            Some(&writer),
            &txn(
                vec![guard("/app/g")],
                vec![op("/app/a")],
                vec![op("/app/b")]
            ),
            &kv
        ),
        Ok(())
    );
    let denied = [
        txn(vec![guard("/other")], vec![op("/app/a")], vec![]),
        txn(vec![], vec![op("/app/a")], vec![op("/other")]),
        txn(
            vec![],
            vec![Op::Range(RangeOp {
                range: KeyRange {
                    key: b"/other".to_vec(),
                    end: Vec::new(),
                },
                ..Default::default()
            })],
            vec![],
        ),
        txn(
            vec![],
            vec![Op::Txn(TxnOp {
                success: vec![op("/other")],
                ..Default::default()
            })],
            vec![],
        ),
    ];
    for command in denied {
        assert_eq!(
            store.check_kv(Some(&writer), &command, &kv),
            Err(AuthError::PermissionDenied),
            "{command:?}"
        );
    }
}

#[test]
fn a_lease_revoke_needs_write_access_to_every_key_of_the_lease() {
    let mut store = enabled_store();
    let mut kv = KvStore::default();
    kv.apply(&KvCommand::LeaseGrant { id: 9, ttl: 60 }, 0, 1)
        .expect("grant");
    for (n, key) in ["/app/a", "/other/b"].into_iter().enumerate() {
        let command = KvCommand::Put(PutOp {
            key: key.as_bytes().to_vec(),
            lease: 9,
            ..Default::default()
        });
        kv.apply(&command, n as u64 + 1, n as u64 + 2).expect("put");
    }
    let root = caller(&store, ROOT);
    run(
        &mut store,
        Some(&root),
        grant("app-write", Access::Write, "/other/b", b""),
    );
    let writer = caller(&store, "writer");
    let reader = caller(&store, "reader");
    let revoke = KvCommand::LeaseRevoke { id: 9 };
    assert_eq!(store.check_kv(Some(&writer), &revoke, &kv), Ok(()));
    assert_eq!(
        store.check_kv(Some(&reader), &revoke, &kv),
        Err(AuthError::PermissionDenied)
    );
    // Attaching a key to that lease is a write to its keys as well.
    let attach = KvCommand::Put(PutOp {
        key: b"/app/c".to_vec(),
        lease: 9,
        ..Default::default()
    });
    assert_eq!(store.check_kv(Some(&writer), &attach, &kv), Ok(()));
    let root = caller(&store, ROOT);
    run(
        &mut store,
        Some(&root),
        AuthCommand::RoleRevokePermission {
            role: "app-write".into(),
            key: b"/other/b".to_vec(),
            range_end: Vec::new(),
        },
    );
    let writer = caller(&store, "writer");
    assert_eq!(
        store.check_kv(Some(&writer), &attach, &kv),
        Err(AuthError::PermissionDenied)
    );
    // Any current user may grant a lease.
    assert_eq!(
        store.check_kv(Some(&reader), &KvCommand::LeaseGrant { id: 1, ttl: 5 }, &kv),
        Err(AuthError::OldRevision),
        "the reader's credentials predate the last change"
    );
    let reader = caller(&store, "reader");
    assert_eq!(
        store.check_kv(Some(&reader), &KvCommand::LeaseGrant { id: 1, ttl: 5 }, &kv),
        Ok(())
    );
}

#[test]
fn with_auth_off_nothing_is_checked() {
    let store = AuthStore::default();
    let kv = KvStore::default();
    assert_eq!(store.check_kv(None, &put("/x"), &kv), Ok(()));
    assert_eq!(store.check_read(None, b"/x", b""), Ok(()));
    assert_eq!(store.check_admin(None), Ok(()));
    assert_eq!(store.check_user(None), Ok(()));
}

#[test]
fn passwords_hash_slowly_and_verify() {
    // The lowest cost bcrypt allows keeps the test fast; the services use BCRYPT_COST.
    let hash = hash_password("s3cret", 4).expect("hash");
    assert!(hash.starts_with("$2"));
    assert!(verify_password("s3cret", &hash));
    assert!(!verify_password("wrong", &hash));
    assert!(!verify_password("s3cret", "not a hash"));
}

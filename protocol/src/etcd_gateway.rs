//! The HTTP paths of etcd's gRPC gateway (what etcd 3.4 serves on its client port for
//! HTTP/JSON clients) and the gRPC method each stands for: the one table the coordinator's
//! gateway routes by and its mutual-TLS policy judges gateway calls by.

/// `(path under /v3, gRPC method)` for every gateway route. etcd maps `HashKV` onto
/// `/v3/maintenance/hash` as well, where `Hash` shadows it; Ballast serves it at
/// `/v3/maintenance/hashkv`.
pub const ROUTES: &[(&str, &str)] = &[
    ("/kv/range", "/etcdserverpb.KV/Range"),
    ("/kv/put", "/etcdserverpb.KV/Put"),
    ("/kv/deleterange", "/etcdserverpb.KV/DeleteRange"),
    ("/kv/txn", "/etcdserverpb.KV/Txn"),
    ("/kv/compaction", "/etcdserverpb.KV/Compact"),
    ("/watch", "/etcdserverpb.Watch/Watch"),
    ("/lease/grant", "/etcdserverpb.Lease/LeaseGrant"),
    ("/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke"),
    ("/lease/keepalive", "/etcdserverpb.Lease/LeaseKeepAlive"),
    ("/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive"),
    (
        "/kv/lease/timetolive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
    ),
    ("/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/kv/lease/leases", "/etcdserverpb.Lease/LeaseLeases"),
    ("/cluster/member/add", "/etcdserverpb.Cluster/MemberAdd"),
    (
        "/cluster/member/remove",
        "/etcdserverpb.Cluster/MemberRemove",
    ),
    (
        "/cluster/member/update",
        "/etcdserverpb.Cluster/MemberUpdate",
    ),
    ("/cluster/member/list", "/etcdserverpb.Cluster/MemberList"),
    (
        "/cluster/member/promote",
        "/etcdserverpb.Cluster/MemberPromote",
    ),
    ("/maintenance/alarm", "/etcdserverpb.Maintenance/Alarm"),
    ("/maintenance/status", "/etcdserverpb.Maintenance/Status"),
    (
        "/maintenance/defragment",
        "/etcdserverpb.Maintenance/Defragment",
    ),
    ("/maintenance/hash", "/etcdserverpb.Maintenance/Hash"),
    ("/maintenance/hashkv", "/etcdserverpb.Maintenance/HashKV"),
    (
        "/maintenance/snapshot",
        "/etcdserverpb.Maintenance/Snapshot",
    ),
    (
        "/maintenance/transfer-leadership",
        "/etcdserverpb.Maintenance/MoveLeader",
    ),
    ("/auth/enable", "/etcdserverpb.Auth/AuthEnable"),
    ("/auth/disable", "/etcdserverpb.Auth/AuthDisable"),
    ("/auth/status", "/etcdserverpb.Auth/AuthStatus"),
    ("/auth/authenticate", "/etcdserverpb.Auth/Authenticate"),
    ("/auth/user/add", "/etcdserverpb.Auth/UserAdd"),
    ("/auth/user/get", "/etcdserverpb.Auth/UserGet"),
    ("/auth/user/list", "/etcdserverpb.Auth/UserList"),
    ("/auth/user/delete", "/etcdserverpb.Auth/UserDelete"),
    (
        "/auth/user/changepw",
        "/etcdserverpb.Auth/UserChangePassword",
    ),
    ("/auth/user/grant", "/etcdserverpb.Auth/UserGrantRole"),
    ("/auth/user/revoke", "/etcdserverpb.Auth/UserRevokeRole"),
    ("/auth/role/add", "/etcdserverpb.Auth/RoleAdd"),
    ("/auth/role/get", "/etcdserverpb.Auth/RoleGet"),
    ("/auth/role/list", "/etcdserverpb.Auth/RoleList"),
    ("/auth/role/delete", "/etcdserverpb.Auth/RoleDelete"),
    ("/auth/role/grant", "/etcdserverpb.Auth/RoleGrantPermission"),
    (
        "/auth/role/revoke",
        "/etcdserverpb.Auth/RoleRevokePermission",
    ),
];

/// Version prefixes the gateway answers under: etcd 3.4 serves `/v3` and, deprecated,
/// `/v3beta`.
pub const PREFIXES: &[&str] = &["/v3", "/v3beta"];

/// Plain HTTP paths served beside the gateway: etcd's version and health probes.
pub const PROBES: &[&str] = &["/version", "/health"];

/// The gRPC method an HTTP path stands for, if it is a gateway route.
pub fn grpc_method(path: &str) -> Option<&'static str> {
    // `/v3` is also the start of `/v3beta`: every prefix that fits is tried.
    PREFIXES
        .iter()
        .filter_map(|prefix| path.strip_prefix(prefix))
        .find_map(|rest| {
            ROUTES
                .iter()
                .find(|(route, _)| *route == rest)
                .map(|(_, method)| *method)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_methods_under_both_prefixes() {
        assert_eq!(grpc_method("/v3/kv/range"), Some("/etcdserverpb.KV/Range"));
        assert_eq!(
            grpc_method("/v3beta/lease/grant"),
            Some("/etcdserverpb.Lease/LeaseGrant")
        );
        assert_eq!(grpc_method("/v3/kv/rangex"), None);
        assert_eq!(grpc_method("/v2/keys"), None);
        assert_eq!(grpc_method("/etcdserverpb.KV/Range"), None);
        let unique: std::collections::BTreeSet<_> = ROUTES.iter().map(|(p, _)| p).collect();
        assert_eq!(unique.len(), ROUTES.len(), "a path is listed twice");
    }
}

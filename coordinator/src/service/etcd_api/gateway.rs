//! etcd's gRPC gateway on the client port, as etcd 3.4 serves it for HTTP/JSON clients (curl
//! scripts, HA and monitoring tools written in scripting languages): `POST /v3/<service>/<call>`
//! (and the deprecated `/v3beta/...`) with the request as proto3 JSON — original field names,
//! 64-bit integers as strings, bytes as base64, enums by name — answered in the same JSON;
//! streams (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`) as one JSON object
//! per line, `{"result": ...}` or `{"error": ...}`; errors as `{"error", "code", "message"}`
//! with the HTTP status etcd's gateway gives the gRPC code. `GET /version` and `GET /health`
//! answer as etcd's do. Every call runs the gRPC service's own code in process, so auth,
//! forwarding to the leader and etcd's errors are the same as over gRPC. Paths:
//! [`ballast_protocol::etcd_gateway`].

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use ballast_protocol::etcd_gateway::{PREFIXES, grpc_method};
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::auth_server::Auth;
use ballast_protocol::etcdserverpb::cluster_server::Cluster;
use ballast_protocol::etcdserverpb::kv_server::Kv;
use ballast_protocol::etcdserverpb::lease_server::Lease;
use ballast_protocol::etcdserverpb::maintenance_server::Maintenance;
use ballast_tls::Identity;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use super::EtcdApi;
use super::maintenance::ETCD_API_VERSION;

/// Largest request body read: etcd's request limit with room for base64.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long `/health` waits for the replica to confirm it can serve a linearizable read.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The gateway's routes, to merge into the client port's router.
pub fn routes(api: EtcdApi) -> axum::Router {
    let mut router = axum::Router::new();
    for prefix in PREFIXES {
        let api = api.clone();
        router = router.route(
            &format!("{prefix}/{{*call}}"),
            axum::routing::any(move |request: axum::extract::Request| serve(api.clone(), request)),
        );
    }
    let health_api = api.clone();
    router.route("/version", axum::routing::get(version)).route(
        "/health",
        axum::routing::get(move || health(health_api.clone())),
    )
}

/// The HTTP status etcd's gateway (grpc-gateway v1) answers a gRPC code with.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn answer<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => failure(&Status::internal(format!("encoding the answer: {e}"))),
    }
}

/// An error as etcd's gateway writes it.
fn failure(status: &Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    json_response(http_status(status.code()), body.to_string().into_bytes())
}

/// One message of a streamed answer: `{"result": ...}` or, ending it, `{"error": ...}`.
fn stream_line<T: Serialize>(item: Result<T, Status>) -> Vec<u8> {
    let value = match item {
        Ok(message) => serde_json::json!({ "result": message }),
        Err(status) => {
            let http = http_status(status.code());
            serde_json::json!({ "error": {
                "grpc_code": status.code() as i32,
                "http_code": http.as_u16(),
                "message": status.message(),
                "http_status": http.canonical_reason().unwrap_or(""),
            }})
        }
    };
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

fn stream_answer<T: Serialize + Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let lines = stream.map(|item| Ok::<_, Infallible>(stream_line(item)));
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A request message from a JSON body; an empty body is the empty message, as in etcd.
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The request messages of a streaming call: JSON objects one after another.
fn decode_all<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// `message` as a gRPC request carrying the HTTP request's token (`Authorization` or `Token`
/// header) and its client certificate's identity.
fn grpc_request<T>(message: T, parts: &Parts) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for key in ["authorization", "token"] {
        if let Some(value) = parts
            .headers
            .get(key)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            request.metadata_mut().insert(key, value);
        }
    }
    if let Some(identity) = parts.extensions.get::<Identity>() {
        request.extensions_mut().insert(identity.clone());
    }
    request
}

/// Runs a unary call of the gRPC service on the body and answers its reply.
macro_rules! unary {
    ($api:expr, $parts:expr, $body:expr, $service:ident :: $method:ident) => {{
        let request = grpc_request(decode($body)?, $parts);
        let reply = <EtcdApi as $service>::$method($api, request).await?;
        Ok(answer(&reply.into_inner()))
    }};
}

async fn serve(api: EtcdApi, request: axum::extract::Request) -> Response {
    let Some(method) = grpc_method(request.uri().path()) else {
        return failure(&Status::not_found(format!(
            "Not Found: no gateway call at {}",
            request.uri().path()
        )));
    };
    if request.method() != Method::POST {
        let mut response = failure(&Status::invalid_argument("Method Not Allowed: use POST"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return failure(&Status::invalid_argument(
            "etcdserver: request is too large",
        ));
    };
    dispatch(&api, method, &parts, &body)
        .await
        .unwrap_or_else(|status| failure(&status))
}

async fn dispatch(
    api: &EtcdApi,
    method: &str,
    parts: &Parts,
    body: &[u8],
) -> Result<Response, Status> {
    match method {
        "/etcdserverpb.KV/Range" => unary!(api, parts, body, Kv::range),
        "/etcdserverpb.KV/Put" => unary!(api, parts, body, Kv::put),
        "/etcdserverpb.KV/DeleteRange" => unary!(api, parts, body, Kv::delete_range),
        "/etcdserverpb.KV/Txn" => unary!(api, parts, body, Kv::txn),
        "/etcdserverpb.KV/Compact" => unary!(api, parts, body, Kv::compact),
        "/etcdserverpb.Watch/Watch" => {
            let requests: Vec<epb::WatchRequest> = decode_all(body)?;
            let caller = api.request_auth(&grpc_request((), parts))?.caller;
            // The watch goes on after the request body ends, until the client hangs up.
            let inbound = futures::stream::iter(requests.into_iter().map(Ok))
                .chain(futures::stream::pending());
            Ok(stream_answer(api.watch_stream(caller, Box::pin(inbound))))
        }
        "/etcdserverpb.Lease/LeaseGrant" => unary!(api, parts, body, Lease::lease_grant),
        "/etcdserverpb.Lease/LeaseRevoke" => unary!(api, parts, body, Lease::lease_revoke),
        "/etcdserverpb.Lease/LeaseKeepAlive" => {
            let requests: Vec<epb::LeaseKeepAliveRequest> = decode_all(body)?;
            let auth = api.request_auth(&grpc_request((), parts))?;
            api.check_user(auth.caller.as_ref())?;
            let inbound = futures::stream::iter(requests.into_iter().map(Ok));
            Ok(stream_answer(
                api.keep_alive_stream(auth, Box::pin(inbound)),
            ))
        }
        "/etcdserverpb.Lease/LeaseTimeToLive" => {
            unary!(api, parts, body, Lease::lease_time_to_live)
        }
        "/etcdserverpb.Lease/LeaseLeases" => unary!(api, parts, body, Lease::lease_leases),
        "/etcdserverpb.Cluster/MemberAdd" => unary!(api, parts, body, Cluster::member_add),
        "/etcdserverpb.Cluster/MemberRemove" => unary!(api, parts, body, Cluster::member_remove),
        "/etcdserverpb.Cluster/MemberUpdate" => unary!(api, parts, body, Cluster::member_update),
        "/etcdserverpb.Cluster/MemberList" => unary!(api, parts, body, Cluster::member_list),
        "/etcdserverpb.Cluster/MemberPromote" => {
            unary!(api, parts, body, Cluster::member_promote)
        }
        "/etcdserverpb.Maintenance/Alarm" => unary!(api, parts, body, Maintenance::alarm),
        "/etcdserverpb.Maintenance/Status" => unary!(api, parts, body, Maintenance::status),
        "/etcdserverpb.Maintenance/Defragment" => {
            unary!(api, parts, body, Maintenance::defragment)
        }
        "/etcdserverpb.Maintenance/Hash" => unary!(api, parts, body, Maintenance::hash),
        "/etcdserverpb.Maintenance/HashKV" => unary!(api, parts, body, Maintenance::hash_kv),
        "/etcdserverpb.Maintenance/Snapshot" => {
            let request = grpc_request(decode::<epb::SnapshotRequest>(body)?, parts);
            let stream = <EtcdApi as Maintenance>::snapshot(api, request).await?;
            Ok(stream_answer(stream.into_inner()))
        }
        "/etcdserverpb.Maintenance/MoveLeader" => {
            unary!(api, parts, body, Maintenance::move_leader)
        }
        "/etcdserverpb.Auth/AuthEnable" => unary!(api, parts, body, Auth::auth_enable),
        "/etcdserverpb.Auth/AuthDisable" => unary!(api, parts, body, Auth::auth_disable),
        "/etcdserverpb.Auth/AuthStatus" => unary!(api, parts, body, Auth::auth_status),
        "/etcdserverpb.Auth/Authenticate" => unary!(api, parts, body, Auth::authenticate),
        "/etcdserverpb.Auth/UserAdd" => unary!(api, parts, body, Auth::user_add),
        "/etcdserverpb.Auth/UserGet" => unary!(api, parts, body, Auth::user_get),
        "/etcdserverpb.Auth/UserList" => unary!(api, parts, body, Auth::user_list),
        "/etcdserverpb.Auth/UserDelete" => unary!(api, parts, body, Auth::user_delete),
        "/etcdserverpb.Auth/UserChangePassword" => {
            unary!(api, parts, body, Auth::user_change_password)
        }
        "/etcdserverpb.Auth/UserGrantRole" => unary!(api, parts, body, Auth::user_grant_role),
        "/etcdserverpb.Auth/UserRevokeRole" => unary!(api, parts, body, Auth::user_revoke_role),
        "/etcdserverpb.Auth/RoleAdd" => unary!(api, parts, body, Auth::role_add),
        "/etcdserverpb.Auth/RoleGet" => unary!(api, parts, body, Auth::role_get),
        "/etcdserverpb.Auth/RoleList" => unary!(api, parts, body, Auth::role_list),
        "/etcdserverpb.Auth/RoleDelete" => unary!(api, parts, body, Auth::role_delete),
        "/etcdserverpb.Auth/RoleGrantPermission" => {
            unary!(api, parts, body, Auth::role_grant_permission)
        }
        "/etcdserverpb.Auth/RoleRevokePermission" => {
            unary!(api, parts, body, Auth::role_revoke_permission)
        }
        other => Err(Status::internal(format!(
            "the gateway lists {other} but does not serve it"
        ))),
    }
}

/// `GET /version`, as etcd answers it.
async fn version() -> Response {
    let body = serde_json::json!({
        "etcdserver": ETCD_API_VERSION,
        "etcdcluster": ETCD_API_VERSION,
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// `GET /health` with etcd's meaning: healthy when the replica knows a leader and can serve a
/// linearizable read now (503 `{"health":"false"}` otherwise).
async fn health(api: EtcdApi) -> Response {
    let reason = if api.replica.view().leader.is_none() {
        Some("RAFT NO LEADER")
    } else {
        match tokio::time::timeout(HEALTH_TIMEOUT, api.replica.linearize()).await {
            Ok(Ok(())) => None,
            _ => Some("QGET ERROR"),
        }
    };
    let (status, body) = match reason {
        None => (
            StatusCode::OK,
            serde_json::json!({"health": "true", "reason": ""}),
        ),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"health": "false", "reason": reason}),
        ),
    };
    json_response(status, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_etcds_json_and_errors_its_statuses() {
        let put: epb::PutRequest =
            decode(br#"{"key": "Zm9v", "value": "YmFy", "lease": "7"}"#).expect("put");
        assert_eq!(
            (put.key.as_slice(), put.value.as_slice(), put.lease),
            (&b"foo"[..], &b"bar"[..], 7)
        );
        // camelCase names are accepted too, as by etcd's gateway.
        let range: epb::RangeRequest =
            decode(br#"{"key": "YQ==", "rangeEnd": "Yg==", "sort_order": "DESCEND"}"#)
                .expect("range");
        assert_eq!(range.range_end, b"b");
        assert_eq!(
            range.sort_order,
            epb::range_request::SortOrder::Descend as i32
        );
        assert_eq!(
            decode::<epb::RangeRequest>(b"").expect("empty"),
            epb::RangeRequest::default()
        );
        assert_eq!(
            decode::<epb::PutRequest>(br#"{"nope": 1}"#)
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        let header = epb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        };
        let json = serde_json::to_value(header).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"cluster_id": "1", "member_id": "2", "revision": "3", "raft_term": "4"})
        );
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        let line = stream_line::<epb::ResponseHeader>(Err(Status::permission_denied("no")));
        let value: serde_json::Value = serde_json::from_slice(&line).expect("json line");
        assert_eq!(value["error"]["grpc_code"], 7);
        assert_eq!(value["error"]["http_code"], 403);
        let requests: Vec<epb::WatchRequest> =
            decode_all(br#"{"create_request": {"key": "YQ=="}} {"progress_request": {}}"#)
                .expect("two requests");
        assert_eq!(requests.len(), 2);
    }
}

//! `etcdserverpb.Auth`. Ballast keeps no etcd users or roles yet: clients are authenticated by
//! mutual TLS and authorised by the roles in their certificates (ADR 0011). So auth is off, as
//! etcd reports it: the status says so, the user and role lists are empty, a name is not found
//! and `Authenticate` answers etcd's "not enabled"; changes answer with what to use instead.

use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use super::EtcdApi;

/// What a change to etcd's users, roles or auth switch answers.
const USE_MTLS: &str = "etcdserver: Ballast keeps no etcd users or roles: clients authenticate \
     with mutual TLS certificates whose roles (admin, readonly, shard/ID) decide what they may \
     call; see docs/security.md";

impl EtcdApi {
    /// The header of an auth answer, after checking the call is for this cluster.
    fn auth_header<T>(&self, request: &Request<T>) -> Result<Option<epb::ResponseHeader>, Status> {
        self.replica.check_cluster(request.metadata())?;
        Ok(Some(self.header_at(self.replica.state.revision())))
    }

    /// Refuses a change to users, roles or the auth switch.
    fn refuse_auth_change<T, R>(&self, request: &Request<T>) -> Result<Response<R>, Status> {
        self.replica.check_cluster(request.metadata())?;
        Err(Status::failed_precondition(USE_MTLS))
    }
}

#[tonic::async_trait]
impl Auth for EtcdApi {
    async fn auth_status(
        &self,
        request: Request<epb::AuthStatusRequest>,
    ) -> Result<Response<epb::AuthStatusResponse>, Status> {
        Ok(Response::new(epb::AuthStatusResponse {
            header: self.auth_header(&request)?,
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<epb::AuthDisableRequest>,
    ) -> Result<Response<epb::AuthDisableResponse>, Status> {
        // Already off, as etcd answers a disable of disabled auth.
        Ok(Response::new(epb::AuthDisableResponse {
            header: self.auth_header(&request)?,
        }))
    }

    async fn auth_enable(
        &self,
        request: Request<epb::AuthEnableRequest>,
    ) -> Result<Response<epb::AuthEnableResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn authenticate(
        &self,
        request: Request<epb::AuthenticateRequest>,
    ) -> Result<Response<epb::AuthenticateResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        Err(Status::failed_precondition(
            "etcdserver: authentication is not enabled",
        ))
    }

    async fn user_list(
        &self,
        request: Request<epb::AuthUserListRequest>,
    ) -> Result<Response<epb::AuthUserListResponse>, Status> {
        Ok(Response::new(epb::AuthUserListResponse {
            header: self.auth_header(&request)?,
            users: Vec::new(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<epb::AuthRoleListRequest>,
    ) -> Result<Response<epb::AuthRoleListResponse>, Status> {
        Ok(Response::new(epb::AuthRoleListResponse {
            header: self.auth_header(&request)?,
            roles: Vec::new(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<epb::AuthUserGetRequest>,
    ) -> Result<Response<epb::AuthUserGetResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        Err(Status::failed_precondition(
            "etcdserver: user name not found",
        ))
    }

    async fn role_get(
        &self,
        request: Request<epb::AuthRoleGetRequest>,
    ) -> Result<Response<epb::AuthRoleGetResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        Err(Status::failed_precondition(
            "etcdserver: role name not found",
        ))
    }

    async fn user_add(
        &self,
        request: Request<epb::AuthUserAddRequest>,
    ) -> Result<Response<epb::AuthUserAddResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn user_delete(
        &self,
        request: Request<epb::AuthUserDeleteRequest>,
    ) -> Result<Response<epb::AuthUserDeleteResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn user_change_password(
        &self,
        request: Request<epb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<epb::AuthUserChangePasswordResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn user_grant_role(
        &self,
        request: Request<epb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<epb::AuthUserGrantRoleResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn user_revoke_role(
        &self,
        request: Request<epb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<epb::AuthUserRevokeRoleResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn role_add(
        &self,
        request: Request<epb::AuthRoleAddRequest>,
    ) -> Result<Response<epb::AuthRoleAddResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn role_delete(
        &self,
        request: Request<epb::AuthRoleDeleteRequest>,
    ) -> Result<Response<epb::AuthRoleDeleteResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn role_grant_permission(
        &self,
        request: Request<epb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<epb::AuthRoleGrantPermissionResponse>, Status> {
        self.refuse_auth_change(&request)
    }

    async fn role_revoke_permission(
        &self,
        request: Request<epb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<epb::AuthRoleRevokePermissionResponse>, Status> {
        self.refuse_auth_change(&request)
    }
}

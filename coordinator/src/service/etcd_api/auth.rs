//! `etcdserverpb.Auth`: etcd's users, roles and auth switch ([`crate::auth`] holds them in the
//! replicated state). Changes go through the leader and are checked when they apply; reads
//! and logins are answered by any replica once it caught up with the leader. Passwords are
//! hashed with bcrypt by the replica that proposes the change, on a blocking thread, and only
//! the hash enters the log. Tokens are signed JWTs any replica can check (`auth::token`).

use ballast_protocol::authpb;
use ballast_protocol::etcdserverpb as epb;
use ballast_protocol::etcdserverpb::auth_client::AuthClient;
use ballast_protocol::etcdserverpb::auth_server::Auth;
use tonic::{Request, Response, Status};

use super::{EtcdApi, on_leader_call};
use crate::auth::{
    Access, AuthCommand, AuthError, BCRYPT_COST, Caller, Permission, hash_password, verify_password,
};
use crate::error::auth_status;
use crate::fleet::{FleetCommand, FleetRequest};

/// Answers a user, role or switch change: the command built from the request's message
/// `body` (inside the leader-side block, so `?` refuses the call), proposed on the leader as
/// the caller, answered with `Reply { header }`.
macro_rules! auth_change {
    ($api:expr, $request:expr, $method:ident, $reply:ident, |$body:ident| $command:expr) => {
        on_leader_call!(
            $api,
            $request,
            AuthClient::$method,
            |$body, caller| async move {
                let header = $api.propose_auth($command, caller).await?;
                Ok(epb::$reply { header })
            }
        )
    };
}

/// How long a token works (etcd's default `--auth-token-ttl`); clients authenticate again
/// when told "invalid auth token", as etcd's do.
pub const TOKEN_TTL_SECS: u64 = 300;

fn refused(error: AuthError) -> Status {
    auth_status(&error)
}

/// Runs bcrypt off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("password hashing stopped: {e}")))
}

/// The bcrypt hash for a new password: the one a client hashed itself (etcd 3.5's
/// `hashedPassword`), else `password` hashed here.
async fn password_hash(password: &str, hashed: &str) -> Result<String, Status> {
    if !hashed.is_empty() {
        // A bcrypt hash is 60 characters of the form $2?$cc$...; anything else could never
        // match a password and would lock the user out silently.
        if hashed.len() != 60 || !hashed.starts_with("$2") {
            return Err(Status::invalid_argument(
                "etcdserver: hashedPassword is not a bcrypt hash",
            ));
        }
        return Ok(hashed.to_string());
    }
    let password = password.to_string();
    blocking(move || hash_password(&password, BCRYPT_COST))
        .await?
        .map_err(Status::invalid_argument)
}

/// A wire permission as the model's.
fn permission(perm: &authpb::Permission) -> Result<Permission, Status> {
    let access = match authpb::permission::Type::try_from(perm.perm_type) {
        Ok(authpb::permission::Type::Read) => Access::Read,
        Ok(authpb::permission::Type::Write) => Access::Write,
        Ok(authpb::permission::Type::Readwrite) => Access::ReadWrite,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown permission type {}",
                perm.perm_type
            )));
        }
    };
    Ok(Permission {
        key: perm.key.clone(),
        range_end: perm.range_end.clone(),
        access,
    })
}

/// The model's permission on the wire.
fn wire_permission(perm: &Permission) -> authpb::Permission {
    let kind = match perm.access {
        Access::Read => authpb::permission::Type::Read,
        Access::Write => authpb::permission::Type::Write,
        Access::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: kind as i32,
        key: perm.key.clone(),
        range_end: perm.range_end.clone(),
    }
}

impl EtcdApi {
    /// Proposes an auth change from `caller` (this replica leads); the header at its revision.
    async fn propose_auth(
        &self,
        command: AuthCommand,
        caller: Option<&Caller>,
    ) -> Result<Option<epb::ResponseHeader>, Status> {
        // Refused here when it certainly would be at apply, so it never reaches the log.
        self.check_admin(caller)?;
        let applied = self
            .replica
            .propose(FleetRequest {
                request_id: String::new(),
                command: FleetCommand::Auth {
                    caller: caller.cloned(),
                    command,
                },
            })
            .await?;
        Ok(Some(self.header_at(applied.revision)))
    }

    /// For the listing calls: the caller, checked as an administrator after this replica
    /// caught up with the leader.
    async fn admin_read<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.replica.check_cluster(request.metadata())?;
        let caller = self.request_auth(request)?.caller;
        self.replica.linearize().await?;
        self.check_admin(caller.as_ref())
    }

    fn current_header(&self) -> Option<epb::ResponseHeader> {
        Some(self.header_at(self.replica.state.revision()))
    }
}

#[tonic::async_trait]
impl Auth for EtcdApi {
    async fn auth_status(
        &self,
        request: Request<epb::AuthStatusRequest>,
    ) -> Result<Response<epb::AuthStatusResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let (enabled, auth_revision) = {
            let fleet = self.replica.state.fleet();
            (fleet.auth().enabled(), fleet.auth().revision())
        };
        Ok(Response::new(epb::AuthStatusResponse {
            header: self.current_header(),
            enabled,
            auth_revision,
        }))
    }

    async fn auth_enable(
        &self,
        request: Request<epb::AuthEnableRequest>,
    ) -> Result<Response<epb::AuthEnableResponse>, Status> {
        auth_change!(self, request, auth_enable, AuthEnableResponse, |_body| {
            AuthCommand::Enable {
                secret: rand::random::<[u8; 32]>().to_vec(),
            }
        })
    }

    async fn auth_disable(
        &self,
        request: Request<epb::AuthDisableRequest>,
    ) -> Result<Response<epb::AuthDisableResponse>, Status> {
        auth_change!(self, request, auth_disable, AuthDisableResponse, |_body| {
            AuthCommand::Disable
        })
    }

    async fn authenticate(
        &self,
        request: Request<epb::AuthenticateRequest>,
    ) -> Result<Response<epb::AuthenticateResponse>, Status> {
        self.replica.check_cluster(request.metadata())?;
        let request = request.into_inner();
        // The newest users and passwords, so a token is never issued at a stale revision.
        self.replica.linearize().await?;
        let (hash, revision, secret) = {
            let fleet = self.replica.state.fleet();
            let auth = fleet.auth();
            if !auth.enabled() {
                return Err(refused(AuthError::NotEnabled));
            }
            // An unknown user and a wrong password answer alike.
            let hash = auth
                .user(&request.name)
                .ok()
                .and_then(|user| user.password_hash.clone());
            (hash, auth.revision(), auth.secret().to_vec())
        };
        let Some(hash) = hash else {
            return Err(refused(AuthError::AuthFailed));
        };
        let password = request.password.clone();
        if !blocking(move || verify_password(&password, &hash)).await? {
            return Err(refused(AuthError::AuthFailed));
        }
        let claims = crate::auth::token::Claims {
            username: request.name,
            revision,
            exp: ballast_protocol::clock::unix_ms() / 1000 + TOKEN_TTL_SECS,
        };
        Ok(Response::new(epb::AuthenticateResponse {
            header: self.current_header(),
            token: crate::auth::token::issue(&secret, &claims),
        }))
    }

    async fn user_add(
        &self,
        request: Request<epb::AuthUserAddRequest>,
    ) -> Result<Response<epb::AuthUserAddResponse>, Status> {
        on_leader_call!(
            self,
            request,
            AuthClient::user_add,
            |body, caller| async move {
                if body.name.is_empty() {
                    return Err(refused(AuthError::UserEmpty));
                }
                self.check_admin(caller)?;
                let no_password = body.options.as_ref().is_some_and(|o| o.no_password);
                let password_hash = if no_password {
                    None
                } else {
                    Some(password_hash(&body.password, &body.hashed_password).await?)
                };
                let command = AuthCommand::UserAdd {
                    name: body.name.clone(),
                    password_hash,
                };
                let header = self.propose_auth(command, caller).await?;
                Ok(epb::AuthUserAddResponse { header })
            }
        )
    }

    async fn user_get(
        &self,
        request: Request<epb::AuthUserGetRequest>,
    ) -> Result<Response<epb::AuthUserGetResponse>, Status> {
        self.admin_read(&request).await?;
        let roles = {
            let fleet = self.replica.state.fleet();
            let user = fleet
                .auth()
                .user(&request.get_ref().name)
                .map_err(refused)?;
            user.roles.iter().cloned().collect()
        };
        Ok(Response::new(epb::AuthUserGetResponse {
            header: self.current_header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<epb::AuthUserListRequest>,
    ) -> Result<Response<epb::AuthUserListResponse>, Status> {
        self.admin_read(&request).await?;
        let users = {
            let fleet = self.replica.state.fleet();
            fleet.auth().users().map(|(name, _)| name.clone()).collect()
        };
        Ok(Response::new(epb::AuthUserListResponse {
            header: self.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<epb::AuthUserDeleteRequest>,
    ) -> Result<Response<epb::AuthUserDeleteResponse>, Status> {
        auth_change!(self, request, user_delete, AuthUserDeleteResponse, |body| {
            AuthCommand::UserDelete {
                name: body.name.clone(),
            }
        })
    }

    async fn user_change_password(
        &self,
        request: Request<epb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<epb::AuthUserChangePasswordResponse>, Status> {
        on_leader_call!(
            self,
            request,
            AuthClient::user_change_password,
            |body, caller| async move {
                self.check_admin(caller)?;
                let command = AuthCommand::UserChangePassword {
                    name: body.name.clone(),
                    password_hash: password_hash(&body.password, &body.hashed_password).await?,
                };
                let header = self.propose_auth(command, caller).await?;
                Ok(epb::AuthUserChangePasswordResponse { header })
            }
        )
    }

    async fn user_grant_role(
        &self,
        request: Request<epb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<epb::AuthUserGrantRoleResponse>, Status> {
        auth_change!(
            self,
            request,
            user_grant_role,
            AuthUserGrantRoleResponse,
            |body| AuthCommand::UserGrantRole {
                user: body.user.clone(),
                role: body.role.clone(),
            }
        )
    }

    async fn user_revoke_role(
        &self,
        request: Request<epb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<epb::AuthUserRevokeRoleResponse>, Status> {
        auth_change!(
            self,
            request,
            user_revoke_role,
            AuthUserRevokeRoleResponse,
            |body| AuthCommand::UserRevokeRole {
                user: body.name.clone(),
                role: body.role.clone(),
            }
        )
    }

    async fn role_add(
        &self,
        request: Request<epb::AuthRoleAddRequest>,
    ) -> Result<Response<epb::AuthRoleAddResponse>, Status> {
        auth_change!(self, request, role_add, AuthRoleAddResponse, |body| {
            AuthCommand::RoleAdd {
                name: body.name.clone(),
            }
        })
    }

    async fn role_get(
        &self,
        request: Request<epb::AuthRoleGetRequest>,
    ) -> Result<Response<epb::AuthRoleGetResponse>, Status> {
        self.admin_read(&request).await?;
        let name = &request.get_ref().role;
        let perm = {
            let fleet = self.replica.state.fleet();
            let auth = fleet.auth();
            match auth.role(name) {
                Ok(role) => role.permissions.iter().map(wire_permission).collect(),
                // Root may be granted without being defined (as in etcd).
                Err(_) if name == crate::auth::ROOT => Vec::new(),
                Err(e) => return Err(refused(e)),
            }
        };
        Ok(Response::new(epb::AuthRoleGetResponse {
            header: self.current_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<epb::AuthRoleListRequest>,
    ) -> Result<Response<epb::AuthRoleListResponse>, Status> {
        self.admin_read(&request).await?;
        let roles = {
            let fleet = self.replica.state.fleet();
            fleet.auth().roles().map(|(name, _)| name.clone()).collect()
        };
        Ok(Response::new(epb::AuthRoleListResponse {
            header: self.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<epb::AuthRoleDeleteRequest>,
    ) -> Result<Response<epb::AuthRoleDeleteResponse>, Status> {
        auth_change!(self, request, role_delete, AuthRoleDeleteResponse, |body| {
            AuthCommand::RoleDelete {
                name: body.role.clone(),
            }
        })
    }

    async fn role_grant_permission(
        &self,
        request: Request<epb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<epb::AuthRoleGrantPermissionResponse>, Status> {
        auth_change!(
            self,
            request,
            role_grant_permission,
            AuthRoleGrantPermissionResponse,
            |body| AuthCommand::RoleGrantPermission {
                role: body.name.clone(),
                permission: permission(body.perm.as_ref().ok_or_else(|| {
                    Status::invalid_argument("etcdserver: permission not given")
                })?)?,
            }
        )
    }

    async fn role_revoke_permission(
        &self,
        request: Request<epb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<epb::AuthRoleRevokePermissionResponse>, Status> {
        auth_change!(
            self,
            request,
            role_revoke_permission,
            AuthRoleRevokePermissionResponse,
            |body| AuthCommand::RoleRevokePermission {
                role: body.role.clone(),
                key: body.key.clone(),
                range_end: body.range_end.clone(),
            }
        )
    }
}

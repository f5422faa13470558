//! etcd's authentication and authorisation for the coordination KV, as a plain struct inside
//! the replicated state machine: users with bcrypt-hashed passwords, roles with key
//! permissions, the auth switch and its revision, and the secret tokens are signed with. Every
//! change and every KV write is checked when the log entry applies, against the state at that
//! point of the log, so a permission revoked before a write commits refuses the write on every
//! replica alike. Reads are checked by the replica serving them, after it caught up.
//!
//! Ballast's own mutual-TLS roles (ADR 0011, [`crate::security`]) gate every call first; this
//! adds etcd's users on top for the etcd API (docs/etcd-api.md, "Auth").

mod password;
mod permissions;
#[cfg(test)]
mod tests;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use password::{BCRYPT_COST, hash_password, verify_password};
pub use permissions::{Access, Permission, UserAccess};

use crate::kv::{KvCommand, KvStore, Op};

/// The user whose role makes it an administrator, and that role (etcd's names).
pub const ROOT: &str = "root";

/// Who sent a KV or auth command, as the replica that received it resolved it: a user and the
/// auth revision its credentials were checked at (a token's, or the current one for a
/// certificate's common name).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User name.
    pub user: String,
    /// Auth revision of the credentials.
    pub revision: u64,
}

/// One etcd user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// bcrypt hash of the password; `None` for a user that cannot log in with one (etcd's
    /// `--no-password`: certificate common names only).
    pub password_hash: Option<String>,
    /// Roles granted.
    pub roles: BTreeSet<String>,
}

/// One etcd role: its grants in (key, range end) order, one per range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Role {
    /// Grants.
    pub permissions: Vec<Permission>,
}

/// A change to users, roles or the auth switch. Passwords arrive hashed: the proposer hashes
/// them, so the log and snapshots never hold one in clear.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    /// Turn auth on, with a fresh token-signing secret the proposer drew.
    Enable {
        /// Secret that signs this enable's tokens.
        secret: Vec<u8>,
    },
    /// Turn auth off.
    Disable,
    /// Add a user.
    UserAdd {
        /// Name.
        name: String,
        /// bcrypt hash, or `None` for a user without a password.
        password_hash: Option<String>,
    },
    /// Delete a user.
    UserDelete {
        /// Name.
        name: String,
    },
    /// Set a user's password.
    UserChangePassword {
        /// Name.
        name: String,
        /// bcrypt hash.
        password_hash: String,
    },
    /// Grant a role to a user.
    UserGrantRole {
        /// User.
        user: String,
        /// Role.
        role: String,
    },
    /// Take a role from a user.
    UserRevokeRole {
        /// User.
        user: String,
        /// Role.
        role: String,
    },
    /// Add a role.
    RoleAdd {
        /// Name.
        name: String,
    },
    /// Delete a role (and take it from every user).
    RoleDelete {
        /// Name.
        name: String,
    },
    /// Grant a permission to a role (replacing its grant on the same range).
    RoleGrantPermission {
        /// Role.
        role: String,
        /// Grant.
        permission: Permission,
    },
    /// Take a role's grant on a range.
    RoleRevokePermission {
        /// Role.
        role: String,
        /// First key of the grant.
        key: Vec<u8>,
        /// End of the grant's range.
        range_end: Vec<u8>,
    },
}

/// A refusal, with etcd's message (its clients match on them); the service layer gives each
/// etcd's gRPC code.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No user: auth is on and the call carried no token or certificate name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// User exists.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExists,
    /// Unknown user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// Role exists.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExists,
    /// Unknown role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// Empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not hold.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not hold.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Auth is off.
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    /// A token that is malformed, forged, expired or from an earlier enable.
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
    /// A change that would lock every administrator out (deleting root while auth is on).
    #[error("etcdserver: invalid auth management")]
    InvalidManagement,
    /// Credentials checked before the last auth change; authenticate again.
    #[error("etcdserver: revision of auth store is old")]
    OldRevision,
    /// Enabling without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserMissing,
    /// Enabling while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleMissing,
}

/// Users, roles, the switch, its revision and the token secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthStore {
    enabled: bool,
    /// Bumped by every change; credentials older than it are refused.
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Signs tokens while enabled; empty while disabled.
    secret: Vec<u8>,
}

impl AuthStore {
    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The token-signing secret (empty while auth is off).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Users in name order.
    pub fn users(&self) -> impl Iterator<Item = (&String, &User)> {
        self.users.iter()
    }

    /// One user.
    pub fn user(&self, name: &str) -> Result<&User, AuthError> {
        self.users.get(name).ok_or(AuthError::UserNotFound)
    }

    /// Roles in name order.
    pub fn roles(&self) -> impl Iterator<Item = (&String, &Role)> {
        self.roles.iter()
    }

    /// One role.
    pub fn role(&self, name: &str) -> Result<&Role, AuthError> {
        self.roles.get(name).ok_or(AuthError::RoleNotFound)
    }

    /// Applies a change from `caller`. While auth is on only an administrator may change
    /// anything. `Ok(true)` if the store changed (the auth revision moved on).
    pub fn apply(
        &mut self,
        caller: Option<&Caller>,
        command: &AuthCommand,
    ) -> Result<bool, AuthError> {
        self.check_admin(caller)?;
        match command {
            AuthCommand::Enable { secret } => {
                if self.enabled {
                    // etcd ignores an enable of enabled auth.
                    return Ok(false);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserMissing)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleMissing);
                }
                self.enabled = true;
                self.secret = secret.clone();
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
                self.secret.clear();
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExists);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                    },
                );
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = Some(password_hash.clone());
            }
            AuthCommand::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                // The root role needs no definition, as in etcd: granting it is what makes an
                // administrator.
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let holder = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !holder.roles.insert(role.clone()) {
                    return Ok(false);
                }
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                let holder = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !holder.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExists);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                let holder = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let same_range = |p: &Permission| {
                    (&p.key, &p.range_end) == (&permission.key, &permission.range_end)
                };
                match holder.permissions.iter_mut().find(|p| same_range(p)) {
                    Some(existing) => existing.access = permission.access,
                    None => {
                        holder.permissions.push(permission.clone());
                        holder.permissions.sort();
                    }
                }
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let holder = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = holder.permissions.len();
                holder
                    .permissions
                    .retain(|p| (&p.key, &p.range_end) != (key, range_end));
                if holder.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        Ok(true)
    }

    /// The user `caller` names, if its credentials are current; etcd's refusals otherwise.
    fn current_user(&self, caller: Option<&Caller>) -> Result<&User, AuthError> {
        let caller = caller
            .filter(|c| !c.user.is_empty())
            .ok_or(AuthError::UserEmpty)?;
        if caller.revision < self.revision {
            return Err(AuthError::OldRevision);
        }
        self.users
            .get(&caller.user)
            .ok_or(AuthError::PermissionDenied)
    }

    /// Passes when auth is off or `caller` is a current user.
    pub fn check_user(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        if self.enabled {
            self.current_user(caller)?;
        }
        Ok(())
    }

    /// Passes when auth is off or `caller` holds the root role: user and role management,
    /// membership and the maintenance calls that read or move the whole store.
    pub fn check_admin(&self, caller: Option<&Caller>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = self.current_user(caller)?;
        if user.roles.contains(ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// What `caller` may touch: `None` for no limit (auth off, or an administrator).
    fn access_of(&self, caller: Option<&Caller>) -> Result<Option<UserAccess>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        let user = self.current_user(caller)?;
        if user.roles.contains(ROOT) {
            return Ok(None);
        }
        let grants = user
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| role.permissions.iter());
        Ok(Some(UserAccess::of(grants)))
    }

    /// Passes when `caller` may read every key of `[key, range_end)` (range reads, watches).
    pub fn check_read(
        &self,
        caller: Option<&Caller>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        match self.access_of(caller)? {
            Some(access) if !access.allows(Access::Read, key, range_end) => {
                Err(AuthError::PermissionDenied)
            }
            _ => Ok(()),
        }
    }

    /// Passes when `caller` may run `command` against `kv` as etcd decides it: reads need
    /// read access, writes write access (and read access when they return the previous
    /// values), a transaction every key its guards and both branches name, a put to a lease
    /// or a lease revoke write access to every key of the lease; granting a lease or
    /// compacting needs only a current user.
    pub fn check_kv(
        &self,
        caller: Option<&Caller>,
        command: &KvCommand,
        kv: &KvStore,
    ) -> Result<(), AuthError> {
        let Some(access) = self.access_of(caller)? else {
            return Ok(());
        };
        let allowed = match command {
            KvCommand::Put(put) => put_allowed(&access, put, kv),
            KvCommand::Delete(delete) => delete_allowed(&access, delete),
            KvCommand::Txn(txn) => txn_allowed(&access, txn, kv),
            KvCommand::Compact { .. } | KvCommand::LeaseGrant { .. } => true,
            KvCommand::LeaseRevoke { id } => lease_keys_writable(&access, *id, kv),
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }
}

fn put_allowed(access: &UserAccess, put: &crate::kv::PutOp, kv: &KvStore) -> bool {
    access.allows(Access::Write, &put.key, b"")
        && (!put.prev_kv || access.allows(Access::Read, &put.key, b""))
        && (put.lease == 0 || lease_keys_writable(access, put.lease, kv))
}

fn delete_allowed(access: &UserAccess, delete: &crate::kv::DeleteOp) -> bool {
    let range = &delete.range;
    access.allows(Access::Write, &range.key, &range.end)
        && (!delete.prev_kv || access.allows(Access::Read, &range.key, &range.end))
}

fn txn_allowed(access: &UserAccess, txn: &crate::kv::TxnOp, kv: &KvStore) -> bool {
    txn.compare
        .iter()
        .all(|c| access.allows(Access::Read, &c.range.key, &c.range.end))
        && txn
            .success
            .iter()
            .chain(txn.failure.iter())
            .all(|op| match op {
                Op::Range(range) => access.allows(Access::Read, &range.range.key, &range.range.end),
                Op::Put(put) => put_allowed(access, put, kv),
                Op::Delete(delete) => delete_allowed(access, delete),
                Op::Txn(nested) => txn_allowed(access, nested, kv),
            })
}

/// Whether every key attached to lease `id` may be written (a missing lease has none).
fn lease_keys_writable(access: &UserAccess, id: i64, kv: &KvStore) -> bool {
    kv.lease(id).is_none_or(|lease| {
        lease
            .keys
            .iter()
            .all(|key| access.allows(Access::Write, key, b""))
    })
}

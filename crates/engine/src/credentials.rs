//! NBD credentials: pre-shared keys an account's NBD clients authenticate with (the NBD front end
//! speaks TLS-PSK), and which exports an account may open.
//!
//! A credential is `(identity, key, account)`: the identity is public (it travels in the TLS
//! handshake), the 256-bit key never leaves the catalog except in the answer to the authenticated
//! call that creates it, and never appears in logs. Revoking (delete, rotate) tells the NBD front
//! end through [`crate::ExportHooks::credentials_revoked`], which ends live connections.

use std::fmt;

use blocksnap_catalog::Row;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Rec, State};
use crate::error::{EngineError, Result};
use crate::model::{Ctx, Millis, SnapshotState, now_millis};

pub(crate) const KIND_NBD_CREDENTIAL: &str = "nbd_credential";
/// Live credentials per account (rotation replaces them all with one).
pub const MAX_NBD_CREDENTIALS: usize = 5;

/// One NBD credential, as stored. `Debug` leaves the key out.
#[derive(Clone, Serialize, Deserialize)]
pub struct NbdCredential {
    /// The TLS-PSK identity (`nbdk-` + 20 hex digits).
    pub identity: String,
    pub account: String,
    /// The pre-shared key, hex (32 bytes).
    pub key: String,
    pub created: Millis,
}

impl fmt::Debug for NbdCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdCredential")
            .field("identity", &self.identity)
            .field("account", &self.account)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// A credential as listed (no key).
#[derive(Debug, Clone)]
pub struct NbdCredentialInfo {
    pub identity: String,
    pub created: Millis,
}

fn new_credential(account: &str) -> NbdCredential {
    let mut rng = rand::rng();
    let id: [u8; 10] = rng.random();
    let key: [u8; 32] = rng.random();
    NbdCredential {
        identity: format!("nbdk-{}", hex::encode(id)),
        account: account.to_string(),
        key: hex::encode(key),
        created: now_millis(),
    }
}

fn parse(row: &Row) -> Option<NbdCredential> {
    serde_json::from_str(&row.doc).ok()
}

fn credential_rec(c: &NbdCredential) -> Result<Rec> {
    Ok(Rec::Doc(
        KIND_NBD_CREDENTIAL,
        Row {
            kind: KIND_NBD_CREDENTIAL.into(),
            id: c.identity.clone(),
            account: c.account.clone(),
            region: String::new(),
            doc: serde_json::to_string(c)?,
        },
    ))
}

fn of_account<'a>(st: &'a State, account: &'a str) -> impl Iterator<Item = NbdCredential> + 'a {
    st.docs
        .get(KIND_NBD_CREDENTIAL)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(move |r| r.account == account)
        .filter_map(parse)
}

/// The identities of an account's NBD credentials.
pub(crate) fn identities_of(st: &State, account: &str) -> Vec<String> {
    of_account(st, account).map(|c| c.identity).collect()
}

/// May `account` use an export owned by `owner`? Its own, and its Lightsail principal's.
pub(crate) fn owns(account: &str, owner: &str) -> bool {
    owner == account || owner.strip_suffix(":lightsail") == Some(account)
}

impl Engine {
    /// Issue a new NBD credential for the calling account (its other credentials stay valid).
    pub fn create_nbd_credential(&self, ctx: &Ctx) -> Result<NbdCredential> {
        let mut st = self.lock();
        if of_account(&st, &ctx.account).count() >= MAX_NBD_CREDENTIALS {
            return Err(EngineError::client(
                "LimitExceeded",
                format!(
                    "The account already has {MAX_NBD_CREDENTIALS} NBD credentials; delete one or rotate (which replaces them all)."
                ),
            ));
        }
        let c = new_credential(&ctx.account);
        self.commit(&mut st, vec![credential_rec(&c)?])?;
        tracing::info!(account = %ctx.account, identity = %c.identity, "nbd credential issued");
        Ok(c)
    }

    /// Replace every NBD credential of the calling account with one new one; connections that
    /// authenticated with the old ones are closed before this returns.
    pub fn rotate_nbd_credentials(&self, ctx: &Ctx) -> Result<NbdCredential> {
        let mut st = self.lock();
        let old: Vec<String> = of_account(&st, &ctx.account).map(|c| c.identity).collect();
        let c = new_credential(&ctx.account);
        let mut recs = vec![credential_rec(&c)?];
        recs.extend(old.iter().map(|id| Rec::DeleteDoc(KIND_NBD_CREDENTIAL, id.clone())));
        self.commit(&mut st, recs)?;
        drop(st);
        tracing::info!(account = %ctx.account, identity = %c.identity, revoked = old.len(), "nbd credentials rotated");
        self.revoke_identities(&old);
        Ok(c)
    }

    /// Revoke one credential of the calling account; its connections are closed before this returns.
    pub fn delete_nbd_credential(&self, ctx: &Ctx, identity: &str) -> Result<()> {
        let mut st = self.lock();
        let known =
            st.docs.get(KIND_NBD_CREDENTIAL).and_then(|m| m.get(identity)).is_some_and(|r| r.account == ctx.account);
        if !known {
            return Err(EngineError::client(
                "ResourceNotFoundException",
                format!("The NBD credential '{identity}' does not exist."),
            ));
        }
        self.commit(&mut st, vec![Rec::DeleteDoc(KIND_NBD_CREDENTIAL, identity.to_string())])?;
        drop(st);
        tracing::info!(account = %ctx.account, %identity, "nbd credential revoked");
        self.revoke_identities(&[identity.to_string()]);
        Ok(())
    }

    /// The calling account's credentials, oldest first (no keys).
    pub fn list_nbd_credentials(&self, ctx: &Ctx) -> Vec<NbdCredentialInfo> {
        let st = self.lock();
        let mut v: Vec<NbdCredentialInfo> = of_account(&st, &ctx.account)
            .map(|c| NbdCredentialInfo { identity: c.identity, created: c.created })
            .collect();
        v.sort_by(|a, b| (a.created, &a.identity).cmp(&(b.created, &b.identity)));
        v
    }

    /// The pre-shared key of a credential (for the TLS handshake), if it exists.
    pub fn nbd_psk(&self, identity: &str) -> Option<Vec<u8>> {
        let st = self.lock();
        let c = parse(st.docs.get(KIND_NBD_CREDENTIAL)?.get(identity)?)?;
        hex::decode(c.key).ok()
    }

    /// The account a credential belongs to, if it still exists.
    pub fn nbd_account(&self, identity: &str) -> Option<String> {
        let st = self.lock();
        Some(st.docs.get(KIND_NBD_CREDENTIAL)?.get(identity)?.account.clone())
    }

    /// May `account` open this export? `vol-…`: attached and its own; `snap-…`: completed and one
    /// it may create a volume from (its own, shared with it, or public).
    pub fn nbd_may_open(&self, account: &str, export: &str) -> bool {
        let st = self.lock();
        if export.starts_with("vol-") {
            return st.volumes.get(export).is_some_and(|v| !v.attachments.is_empty() && owns(account, &v.account));
        }
        if export.starts_with("snap-") {
            return st.snapshots.get(export).is_some_and(|s| {
                s.state == SnapshotState::Completed
                    && (owns(account, &s.account)
                        || s.create_volume_permissions.iter().any(|p| p == account || p == "all"))
            });
        }
        false
    }

    /// What `NBD_OPT_LIST` shows an account: its attached volumes.
    pub fn nbd_exports(&self, account: &str) -> Vec<String> {
        self.lock()
            .volumes
            .values()
            .filter(|v| !v.attachments.is_empty() && owns(account, &v.account))
            .map(|v| v.id.clone())
            .collect()
    }

    pub(crate) fn revoke_identities(&self, identities: &[String]) {
        if identities.is_empty() {
            return;
        }
        if let Some(h) = self.exports.get() {
            h.credentials_revoked(identities);
        }
    }
}

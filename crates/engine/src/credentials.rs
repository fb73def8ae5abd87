//! NBD credentials: pre-shared keys an account's NBD clients authenticate with (the NBD front end
//! speaks TLS-PSK), and which exports an account may open.
//!
//! A credential is `(identity, key, account)`: the identity is public (it travels in the TLS
//! handshake), the 256-bit key never leaves the catalog except in the answer to the authenticated
//! call that creates it, and never appears in logs. Revoking (delete, rotate) tells the NBD front
//! end through [`crate::ExportHooks::credentials_revoked`], which ends live connections.
//!
//! Where exports are served: [`Engine::nbd_export_endpoint`] is the one place that answers it
//! (CreateNbdCredential, RotateNbdCredentials and DescribeNbdEndpoints go through it). One node
//! serves every export at its advertised endpoint ([`NbdAdvertise`], from `--nbd-advertise` or
//! `--nbd-listen`); with several nodes (issue 14) it answers the endpoint of the node that holds
//! the volume or snapshot.

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

/// The host this node's NBD listener is advertised under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdHost {
    /// A host name or address (`--nbd-advertise`, or the specific address of `--nbd-listen`).
    Fixed(String),
    /// The listener is on every address (0.0.0.0 or ::) and no `--nbd-advertise` was given: the
    /// host the caller reached the HTTP API at, which is this same machine.
    AsReached,
}

/// Where this node's NBD listener is reached, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdAdvertise {
    pub host: NbdHost,
    pub port: u16,
    /// TLS-PSK (false only with `--nbd-insecure-plaintext`).
    pub tls: bool,
    /// The listening address, answered for [`NbdHost::AsReached`] when the caller gave no host.
    pub listen_host: String,
}

impl Default for NbdAdvertise {
    fn default() -> Self {
        NbdAdvertise {
            host: NbdHost::Fixed("127.0.0.1".into()),
            port: 10809,
            tls: true,
            listen_host: "127.0.0.1".into(),
        }
    }
}

/// Where an NBD client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdEndpoint {
    /// A host name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// DescribeNbdEndpoints: the exports of these volumes and snapshots (none named: the caller's
/// attached volumes, what `NBD_OPT_LIST` shows it).
#[derive(Debug, Clone, Default)]
pub struct DescribeNbdEndpoints {
    pub volume_ids: Vec<String>,
    pub snapshot_ids: Vec<String>,
    /// The host the caller reached the API at (see [`NbdHost::AsReached`]).
    pub reached_at: Option<String>,
}

/// Ids one DescribeNbdEndpoints call may name.
pub const MAX_NBD_ENDPOINT_IDS: usize = 1000;

/// Whether an export is a volume's or a snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Volume,
    Snapshot,
}

/// One export and where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdExportInfo {
    /// The NBD export name (the volume or snapshot id).
    pub export: String,
    pub kind: ExportKind,
    pub endpoint: NbdEndpoint,
    /// Why the export cannot be opened now (`None`: it can).
    pub unavailable: Option<String>,
    /// With several nodes: the node holding the volume (or serving the snapshot: the leader).
    pub node: Option<String>,
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

    /// This node's NBD endpoint (what a new credential is used against). `reached_at`: the host
    /// the caller reached the API at.
    pub fn nbd_endpoint(&self, reached_at: Option<&str>) -> NbdEndpoint {
        let a = &self.config.nbd;
        let host = match &a.host {
            NbdHost::Fixed(h) => h.clone(),
            NbdHost::AsReached => reached_at.filter(|h| !h.is_empty()).unwrap_or(&a.listen_host).to_string(),
        };
        NbdEndpoint { host, port: a.port, tls: a.tls }
    }

    /// Where the export of a volume or snapshot (`vol-…`/`snap-…`) is served: the one place that
    /// decides it. One node serves every export. With several nodes (v1, `volumes/placement.rs`)
    /// the leader runs this engine and serves every export it can: snapshots (shared stores) and
    /// the volumes placed on it; a volume placed on another node is unavailable until that node
    /// leads, which [`Engine::describe_nbd_endpoints`] says. Serving volumes on their own nodes
    /// (each node's advertised endpoint, from the `node` table) is the next step.
    pub fn nbd_export_endpoint(&self, _export: &str, reached_at: Option<&str>) -> NbdEndpoint {
        self.nbd_endpoint(reached_at)
    }

    /// DescribeNbdEndpoints: where each named volume's and snapshot's export is served and whether
    /// it can be opened now. An id the caller may not open (unknown, another account's, a snapshot
    /// not shared with it) is `ResourceNotFoundException`, as elsewhere in this API.
    pub fn describe_nbd_endpoints(&self, ctx: &Ctx, req: &DescribeNbdEndpoints) -> Result<Vec<NbdExportInfo>> {
        if req.volume_ids.len() + req.snapshot_ids.len() > MAX_NBD_ENDPOINT_IDS {
            return Err(EngineError::client(
                "ValidationException",
                format!("At most {MAX_NBD_ENDPOINT_IDS} VolumeIds and SnapshotIds may be given in one call."),
            ));
        }
        let not_found = |what: &str, id: &str| {
            EngineError::client("ResourceNotFoundException", format!("The {what} '{id}' does not exist."))
        };
        let mut out: Vec<(String, ExportKind, Option<String>, Option<String>)> = Vec::new();
        {
            let st = self.lock();
            let volumes: Vec<String> = if req.volume_ids.is_empty() && req.snapshot_ids.is_empty() {
                st.volumes
                    .values()
                    .filter(|v| !v.attachments.is_empty() && owns(&ctx.account, &v.account))
                    .map(|v| v.id.clone())
                    .collect()
            } else {
                req.volume_ids.clone()
            };
            for id in &volumes {
                let v = st
                    .volumes
                    .get(id)
                    .filter(|v| owns(&ctx.account, &v.account))
                    .ok_or_else(|| not_found("volume", id))?;
                let why = match self.check_volume_here(v) {
                    Err(e) => Some(e.message()),
                    Ok(()) => v.attachments.is_empty().then(|| {
                        "The volume is not attached: its export is served while it is attached to an instance."
                            .to_string()
                    }),
                };
                let node = v.node.clone().or_else(|| self.config.node_id.clone());
                out.push((id.clone(), ExportKind::Volume, why, node));
            }
            for id in &req.snapshot_ids {
                let s = st
                    .snapshots
                    .get(id)
                    .filter(|s| {
                        owns(&ctx.account, &s.account)
                            || s.create_volume_permissions.iter().any(|p| p == &ctx.account || p == "all")
                    })
                    .ok_or_else(|| not_found("snapshot", id))?;
                let why = if s.state != SnapshotState::Completed {
                    Some(format!("The snapshot is {}: its export is served once it is completed.", s.state.as_str()))
                } else if !crate::archive::in_standard_tier(s) {
                    Some("The snapshot is archived: restore it from the archive tier to read it.".to_string())
                } else {
                    None
                };
                out.push((id.clone(), ExportKind::Snapshot, why, self.config.node_id.clone()));
            }
        }
        Ok(out
            .into_iter()
            .map(|(export, kind, unavailable, node)| NbdExportInfo {
                endpoint: self.nbd_export_endpoint(&export, req.reached_at.as_deref()),
                export,
                kind,
                unavailable,
                node,
            })
            .collect())
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

//! Deleting an account (`DeleteAccount`, root only). The account keeps its row, marked closed, so
//! its id is never reused; in one commit it loses every access key and NBD credential, and the NBD
//! connections that authenticated with those credentials are closed before the call returns.
//!
//! An account that still owns volumes, instances or snapshots (EC2 or Lightsail) is not deleted:
//! the answer names what is left, so nothing is lost by a mistaken deletion. Its KMS keys stay
//! (inert: nobody can call with the account any more).

use crate::credentials::{identities_of, owns};
use crate::engine::{Engine, KIND_ACCESS_KEY, KIND_ACCOUNT, Rec};
use crate::error::{EngineError, Result};
use crate::model::{AccessKey, Account, Ctx, now_millis};

/// What a deletion removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedAccount {
    pub account: String,
    pub access_keys: usize,
    pub nbd_credentials: usize,
}

impl Engine {
    /// Delete `account_id` (see the module docs). Only the root account may, and not itself.
    pub fn delete_account(&self, caller: &Ctx, account_id: &str) -> Result<DeletedAccount> {
        let root = self.root_account();
        if root.as_deref() != Some(caller.account.as_str()) {
            return Err(EngineError::client("AccessDeniedException", "Only the root account may delete accounts."));
        }
        if root.as_deref() == Some(account_id) {
            return Err(EngineError::client("ValidationException", "The root account cannot be deleted."));
        }
        // Keys made beside the server (`blocksnap admin create-key`) are in the catalog, not
        // necessarily in memory: read them, outside the state lock. A key made between this read and
        // the commit below belongs to a closed account, which `access_key` refuses.
        let mut keys: Vec<String> = Vec::new();
        for r in self.catalog.load_kind(KIND_ACCESS_KEY)? {
            if r.account == account_id {
                keys.push(r.id);
            }
        }
        let stored = match self.catalog.get(KIND_ACCOUNT, account_id)? {
            Some(r) => Some(serde_json::from_str::<Account>(&r.doc)?),
            None => None,
        };
        let mut st = self.lock();
        let account = match st.accounts.get(account_id).cloned().or(stored) {
            Some(a) if a.closed.is_none() => a,
            Some(_) => {
                return Err(EngineError::client(
                    "ResourceNotFoundException",
                    format!("The account {account_id} was already deleted."),
                ));
            }
            None => {
                return Err(EngineError::client(
                    "ResourceNotFoundException",
                    format!("The account {account_id} does not exist."),
                ));
            }
        };
        let volumes = st.volumes.values().filter(|v| owns(account_id, &v.account)).count();
        let instances = st.instances.values().filter(|i| owns(account_id, &i.account)).count();
        let snapshots = st.snapshots.values().filter(|s| owns(account_id, &s.account)).count();
        if volumes + instances + snapshots > 0 {
            return Err(EngineError::client(
                "ConflictException",
                format!(
                    "The account {account_id} still owns {volumes} volume(s), {instances} instance(s) and {snapshots} \
                     snapshot(s) (EC2 and Lightsail): delete them first, then delete the account."
                ),
            ));
        }
        keys.extend(st.keys.values().filter(|k| k.account == account_id).map(|k: &AccessKey| k.access_key_id.clone()));
        keys.sort();
        keys.dedup();
        let identities = identities_of(&st, account_id);
        let mut recs = vec![Rec::Account(Account { closed: Some(now_millis()), ..account })];
        recs.extend(keys.iter().map(|k| Rec::DeleteAccessKey(k.clone())));
        recs.extend(identities.iter().map(|i| Rec::DeleteDoc(crate::credentials::KIND_NBD_CREDENTIAL, i.clone())));
        self.commit(&mut st, recs)?;
        drop(st);
        self.sync_pending()?;
        tracing::info!(account = %account_id, access_keys = keys.len(), nbd_credentials = identities.len(), "account deleted");
        // Its NBD connections (its own exports, and snapshots others shared with it) end here.
        self.revoke_identities(&identities);
        Ok(DeletedAccount {
            account: account_id.to_string(),
            access_keys: keys.len(),
            nbd_credentials: identities.len(),
        })
    }
}

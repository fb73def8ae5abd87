//! Access key administration (`blocksnap admin list-keys|create-key|rotate-key|delete-key`).
//!
//! These run in the admin process beside a running server: every change is one catalog commit, and
//! the server reads a key from the catalog on each request ([`Engine::access_key`]), so a rotated or
//! deleted key stops working at once.

use crate::engine::{Engine, Rec};
use crate::error::{EngineError, Result};
use crate::ids;
use crate::model::AccessKey;

/// What `list-keys` shows of a key: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyInfo {
    pub access_key_id: String,
    pub account: String,
    pub account_name: String,
    /// A key of the root account.
    pub root: bool,
}

fn no_such_key(id: &str) -> EngineError {
    EngineError::client("NoSuchEntity", format!("The access key {id} does not exist."))
}

impl Engine {
    /// Every access key (optionally of one account), by account then key id.
    pub fn list_access_keys(&self, account: Option<&str>) -> Vec<AccessKeyInfo> {
        let st = self.lock();
        let mut out: Vec<AccessKeyInfo> = st
            .keys
            .values()
            .filter(|k| account.is_none_or(|a| a == k.account))
            .map(|k| AccessKeyInfo {
                access_key_id: k.access_key_id.clone(),
                account: k.account.clone(),
                account_name: st.accounts.get(&k.account).map(|a| a.name.clone()).unwrap_or_default(),
                root: st.root_account.as_deref() == Some(k.account.as_str()),
            })
            .collect();
        out.sort_by(|a, b| (&a.account, &a.access_key_id).cmp(&(&b.account, &b.access_key_id)));
        out
    }

    /// A new key for an existing account (the first step of a two-step rotation).
    pub fn create_access_key(&self, account: &str) -> Result<AccessKey> {
        let mut st = self.lock();
        match st.accounts.get(account) {
            None => return Err(EngineError::client("NoSuchEntity", format!("The account {account} does not exist."))),
            Some(a) if a.closed.is_some() => {
                return Err(EngineError::client("NoSuchEntity", format!("The account {account} was deleted.")));
            }
            Some(_) => {}
        }
        let key = new_key(&st.keys, account);
        self.commit(&mut st, vec![Rec::AccessKey(key.clone())])?;
        drop(st);
        self.sync_pending()?;
        Ok(key)
    }

    /// Replaces a key by a new one of the same account in one commit: the old key stops working
    /// when the new one starts.
    pub fn rotate_access_key(&self, access_key_id: &str) -> Result<AccessKey> {
        let mut st = self.lock();
        let account = st.keys.get(access_key_id).ok_or_else(|| no_such_key(access_key_id))?.account.clone();
        let key = new_key(&st.keys, &account);
        self.commit(&mut st, vec![Rec::AccessKey(key.clone()), Rec::DeleteAccessKey(access_key_id.to_owned())])?;
        drop(st);
        self.sync_pending()?;
        Ok(key)
    }

    /// Deletes a key; requests signed with it are refused from now on. An account may be left
    /// without keys (`create-key` gives it a new one).
    pub fn delete_access_key(&self, access_key_id: &str) -> Result<AccessKey> {
        let mut st = self.lock();
        let key = st.keys.get(access_key_id).cloned().ok_or_else(|| no_such_key(access_key_id))?;
        self.commit(&mut st, vec![Rec::DeleteAccessKey(access_key_id.to_owned())])?;
        drop(st);
        self.sync_pending()?;
        Ok(key)
    }
}

fn new_key(existing: &std::collections::HashMap<String, AccessKey>, account: &str) -> AccessKey {
    let mut id = ids::new_access_key_id();
    while existing.contains_key(&id) {
        id = ids::new_access_key_id();
    }
    AccessKey { access_key_id: id, secret_access_key: ids::new_secret(), account: account.to_owned() }
}

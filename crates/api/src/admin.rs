//! Account administration over JSON 1.1 (`X-Amz-Target: BlocksnapAdmin_20261130.<Operation>`, SigV4
//! scoped to the service `blocksnap`), for the root account: DeleteAccount. It is an API call, not an
//! offline edit of the data dir, because deleting an account must end its live NBD connections,
//! which only the serving process holds (`blocksnap admin delete-account` calls it).

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, Result};
use serde_json::{Value, json};

use crate::json::Body;

/// The `X-Amz-Target` prefix and the SigV4 service its calls must be scoped to.
pub const TARGET: &str = "BlocksnapAdmin_20261130";
pub const SERVICE: &str = "blocksnap";

pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body) -> Result<Value> {
    match op {
        "DeleteAccount" => {
            let id = body.required("AccountId", "ValidationException")?;
            if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(EngineError::client(
                    "ValidationException",
                    format!("AccountId '{id}' is not an account id (12 digits)."),
                ));
            }
            let d = engine.delete_account(ctx, &id)?;
            Ok(json!({
                "AccountId": d.account,
                "DeletedAccessKeys": d.access_keys,
                "RevokedNbdCredentials": d.nbd_credentials,
            }))
        }
        other => Err(EngineError::client(
            "UnknownOperationException",
            format!("The operation '{other}' is not an operation of {TARGET}."),
        )),
    }
}

//! NBD credentials over JSON 1.1 (`X-Amz-Target: BlocksnapNbd_20261129.<Operation>`, SigV4 scoped to
//! the service `blocksnap`): CreateNbdCredential, RotateNbdCredentials, ListNbdCredentials,
//! DeleteNbdCredential. The key (hex) is only ever in the answer of Create and Rotate.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, NbdCredential, Result};
use serde_json::{Value, json};

use crate::json::{Body, epoch};

/// The `X-Amz-Target` prefix and the SigV4 service its calls must be scoped to.
pub const TARGET: &str = "BlocksnapNbd_20261129";
pub const SERVICE: &str = "blocksnap";

fn issued(c: &NbdCredential) -> Value {
    json!({
        "Identity": c.identity,
        "Key": c.key,
        "AccountId": c.account,
        "CreatedAt": epoch(c.created),
    })
}

pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body) -> Result<Value> {
    match op {
        "CreateNbdCredential" => Ok(json!({ "Credential": issued(&engine.create_nbd_credential(ctx)?) })),
        "RotateNbdCredentials" => Ok(json!({ "Credential": issued(&engine.rotate_nbd_credentials(ctx)?) })),
        "ListNbdCredentials" => {
            let list = engine.list_nbd_credentials(ctx);
            Ok(json!({
                "Credentials": list
                    .iter()
                    .map(|c| json!({ "Identity": c.identity, "CreatedAt": epoch(c.created) }))
                    .collect::<Vec<_>>(),
            }))
        }
        "DeleteNbdCredential" => {
            let id = body.required("Identity", "ValidationException")?;
            engine.delete_nbd_credential(ctx, &id)?;
            Ok(json!({}))
        }
        other => Err(EngineError::client(
            "UnknownOperationException",
            format!("The operation '{other}' is not an operation of {TARGET}."),
        )),
    }
}

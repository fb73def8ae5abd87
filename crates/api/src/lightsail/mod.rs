//! The Lightsail JSON 1.1 front end (`X-Amz-Target: Lightsail_20161128.<Operation>`): disks,
//! instances and disk snapshots by name, as faces of the engine's volumes, instances and snapshots.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, Result};
use serde_json::Value;

use crate::json::Body;

pub fn dispatch(_engine: &Engine, _ctx: &Ctx, op: &str, _body: &Body) -> Result<Value> {
    Err(EngineError::client("InvalidInputException", format!("The Lightsail operation {op} is not supported yet")))
}

//! The test clock over JSON 1.1 (`X-Amz-Target: BlocksnapTest_20261130.AdvanceClock`, SigV4 scoped
//! to the service `blocksnap`): `{"Seconds": n}` moves the engine's time forward and answers
//! `{"Now": <epoch seconds>}`. Served only by a server started with `BLOCKSNAP_TEST_CLOCK=1`, and
//! only to the root account (the engine checks both).

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{Engine, EngineError, Result};
use serde_json::{Value, json};

use crate::json::{Body, epoch};

/// The `X-Amz-Target` prefix and the SigV4 service its calls must be scoped to.
pub const TARGET: &str = "BlocksnapTest_20261130";
pub const SERVICE: &str = "blocksnap";

pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body) -> Result<Value> {
    match op {
        "AdvanceClock" => {
            let seconds = body.0.get("Seconds").and_then(Value::as_u64).ok_or_else(|| {
                EngineError::client(
                    "ValidationException",
                    "Seconds (a whole number of seconds, 0 or more) is required.",
                )
            })?;
            let now = engine.advance_test_clock(ctx, seconds)?;
            Ok(json!({ "Now": epoch(now) }))
        }
        other => Err(EngineError::client(
            "UnknownOperationException",
            format!("The operation '{other}' is not an operation of {TARGET}."),
        )),
    }
}

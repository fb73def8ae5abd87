//! NBD credentials and endpoints over JSON 1.1 (`X-Amz-Target: BlocksnapNbd_20261129.<Operation>`,
//! SigV4 scoped to the service `blocksnap`): CreateNbdCredential, RotateNbdCredentials,
//! ListNbdCredentials, DeleteNbdCredential, DescribeNbdEndpoints. The key (hex) is only ever in
//! the answer of Create and Rotate.
//!
//! Shapes (times in epoch seconds):
//! - Create/Rotate: `{Credential: {Identity, Key, AccountId, CreatedAt, Endpoint}}`, where
//!   `Endpoint` = `{Host, Port, Tls}` is where this server's NBD listener is reached.
//! - DescribeNbdEndpoints `{VolumeIds?, SnapshotIds?}` (none: the caller's attached volumes):
//!   `{Exports: [{ExportName, VolumeId | SnapshotId, Endpoint: {Host, Port, Tls}, Uri,
//!   Available, Reason?, Node?}]}`, in the order asked (volumes first); `Node` (several nodes
//!   only) is the node holding the volume or serving the snapshot. `Uri` is `nbds://host:port/name`
//!   (TLS-PSK: add the identity and `tls-psk-file`) or `nbd://host:port/name` (plaintext
//!   development mode); an IPv6 host is bracketed. An id the caller may not open is
//!   `ResourceNotFoundException`.
//!
//! The host is `--nbd-advertise`'s, or `--nbd-listen`'s address; when that listens on every
//! address (0.0.0.0, ::) and nothing is advertised, it is the host the caller reached this API at
//! (its `Host` header): the same machine, named as the caller names it.

use blocksnap_engine::model::Ctx;
use blocksnap_engine::{
    DescribeNbdEndpoints, Engine, EngineError, ExportKind, NbdCredential, NbdEndpoint, NbdExportInfo, Result,
};
use serde_json::{Map, Value, json};

use crate::json::{Body, epoch};

/// The `X-Amz-Target` prefix and the SigV4 service its calls must be scoped to.
pub const TARGET: &str = "BlocksnapNbd_20261129";
pub const SERVICE: &str = "blocksnap";

fn endpoint(e: &NbdEndpoint) -> Value {
    json!({ "Host": e.host, "Port": e.port, "Tls": e.tls })
}

/// `nbds://host:port/export` (or `nbd://` without TLS), the host bracketed if it is IPv6.
pub fn uri(e: &NbdEndpoint, export: &str) -> String {
    let scheme = if e.tls { "nbds" } else { "nbd" };
    if e.host.contains(':') {
        format!("{scheme}://[{}]:{}/{export}", e.host, e.port)
    } else {
        format!("{scheme}://{}:{}/{export}", e.host, e.port)
    }
}

fn issued(c: &NbdCredential, at: &NbdEndpoint) -> Value {
    json!({
        "Identity": c.identity,
        "Key": c.key,
        "AccountId": c.account,
        "CreatedAt": epoch(c.created),
        "Endpoint": endpoint(at),
    })
}

fn export_info(x: &NbdExportInfo) -> Value {
    let mut o = Map::new();
    o.insert("ExportName".into(), json!(x.export));
    let id_key = match x.kind {
        ExportKind::Volume => "VolumeId",
        ExportKind::Snapshot => "SnapshotId",
    };
    o.insert(id_key.into(), json!(x.export));
    o.insert("Endpoint".into(), endpoint(&x.endpoint));
    o.insert("Uri".into(), json!(uri(&x.endpoint, &x.export)));
    o.insert("Available".into(), json!(x.unavailable.is_none()));
    if let Some(why) = &x.unavailable {
        o.insert("Reason".into(), json!(why));
    }
    // Several nodes: which node holds the volume (serves the snapshot).
    if let Some(node) = &x.node {
        o.insert("Node".into(), json!(node));
    }
    Value::Object(o)
}

/// The host of a `Host` header (`name`, `name:port`, `[v6]:port`), without port or brackets.
pub fn host_of(header: &str) -> Option<String> {
    let h = header.trim();
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (v6, if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
    } else {
        h.split_once(':').map_or((h, None), |(name, port)| (name, Some(port)))
    };
    // Brackets hold an IPv6 address, and only they hold colons ("fe80::1" is no host and port).
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
        && (!h.starts_with('[') || host.parse::<std::net::Ipv6Addr>().is_ok())
        && port.is_none_or(|p| p.parse::<u16>().is_ok());
    ok.then(|| host.to_ascii_lowercase())
}

/// `reached_at`: the host the caller reached this API at (see the module docs).
pub fn dispatch(engine: &Engine, ctx: &Ctx, op: &str, body: &Body, reached_at: Option<&str>) -> Result<Value> {
    match op {
        "CreateNbdCredential" => {
            let c = engine.create_nbd_credential(ctx)?;
            Ok(json!({ "Credential": issued(&c, &engine.nbd_endpoint(reached_at)) }))
        }
        "RotateNbdCredentials" => {
            let c = engine.rotate_nbd_credentials(ctx)?;
            Ok(json!({ "Credential": issued(&c, &engine.nbd_endpoint(reached_at)) }))
        }
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
        "DescribeNbdEndpoints" => {
            let req = DescribeNbdEndpoints {
                volume_ids: body.str_list("VolumeIds")?,
                snapshot_ids: body.str_list("SnapshotIds")?,
                reached_at: reached_at.map(str::to_string),
            };
            let exports = engine.describe_nbd_endpoints(ctx, &req)?;
            Ok(json!({ "Exports": exports.iter().map(export_info).collect::<Vec<_>>() }))
        }
        other => Err(EngineError::client(
            "UnknownOperationException",
            format!("The operation '{other}' is not an operation of {TARGET}."),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_host_headers() {
        assert_eq!(host_of("example.org:4566").as_deref(), Some("example.org"));
        assert_eq!(host_of("Example.ORG").as_deref(), Some("example.org"));
        assert_eq!(host_of("10.0.0.5:80").as_deref(), Some("10.0.0.5"));
        assert_eq!(host_of("[fe80::1]:4566").as_deref(), Some("fe80::1"));
        assert_eq!(host_of("[::1]").as_deref(), Some("::1"));
        for bad in [
            "",
            ":4566",
            "a b:1",
            "evil/x:1",
            "[::1",
            "x@y:1",
            "fe80::1",
            "a:b:c",
            "[::1]x",
            "[a.b]:1",
            "[::1]:port",
            "h:1\r\nX-Injected: 1",
        ] {
            assert_eq!(host_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn uris_bracket_ipv6_and_say_tls() {
        let e = |host: &str, tls| NbdEndpoint { host: host.into(), port: 10809, tls };
        assert_eq!(uri(&e("10.0.0.5", true), "vol-1"), "nbds://10.0.0.5:10809/vol-1");
        assert_eq!(uri(&e("::1", false), "snap-2"), "nbd://[::1]:10809/snap-2");
        assert_eq!(uri(&e("nbd.example.org", true), "vol-1"), "nbds://nbd.example.org:10809/vol-1");
    }
}

//! Envoy's schema at run time: the resources are built as Envoy's own JSON (readable, and what
//! a bootstrap file holds); this module checks that JSON against Envoy's protos (unknown fields,
//! wrong types and unknown `@type`s are errors, as in Envoy) and encodes it as protobuf `Any`
//! for xDS. The descriptors are compiled at build time from the protos `envoy-types` ships.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// `type.googleapis.com/…` of each resource type served.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Route configuration type URL.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Cluster type URL.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Endpoints type URL.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Bootstrap type URL (for checking rendered bootstraps).
pub const BOOTSTRAP: &str = "type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap";

fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| format!("embedded Envoy descriptors are broken: {e}"))
}

/// Parses `json` as the message of `type_url`; the error names the offending field.
pub fn parse(type_url: &str, json: &Value) -> Result<DynamicMessage, String> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let desc = pool()?
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown message type {name}"))?;
    DynamicMessage::deserialize(desc, json.clone()).map_err(|e| format!("{name}: {e}"))
}

/// `json` encoded as an `Any` of `type_url`.
pub fn to_any(
    type_url: &str,
    json: &Value,
) -> Result<envoy_types::pb::google::protobuf::Any, String> {
    let message = parse(type_url, json)?;
    Ok(envoy_types::pb::google::protobuf::Any {
        type_url: type_url.to_owned(),
        value: message.encode_to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_fields_and_typed_config() {
        let ok = json!({"name": "c", "connect_timeout": "1s", "type": "STATIC"});
        assert!(to_any(CLUSTER, &ok).unwrap().value.len() > 3);
        let e = parse(CLUSTER, &json!({"name": "c", "connect_timout": "1s"})).unwrap_err();
        assert!(e.contains("connect_timout"), "{e}");
        let e = parse(
            LISTENER,
            &json!({"name": "l", "filter_chains": [{"filters": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/nope.Nope"}}]}]}),
        )
        .unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}

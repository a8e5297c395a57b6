//! Compiles the Envoy protos the controller emits into a descriptor set, so that the
//! resources it builds as Envoy's own JSON can be checked against the schema and encoded as
//! protobuf for xDS. The `.proto` sources come from the `envoy-types` crate, which ships them.

use std::path::PathBuf;
use std::process::Command;

/// Root files: every message type the controller writes, directly or inside `typed_config`.
const ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/extensions/filters/network/wasm/v3/wasm.proto",
    "envoy/extensions/filters/network/dynamic_modules/v3/dynamic_modules.proto",
    "envoy/extensions/upstreams/http/dynamic_modules/v3/dynamic_modules.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/buffer/v3/buffer.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    // Route policies (policy.rs).
    // local_rate_limit.proto first: its relative `common.ratelimit…` names resolve wrongly
    // once another file has defined the `envoy.extensions.filters.common` package.
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/filters/http/set_filter_state/v3/set_filter_state.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stats/v3/stats.proto",
    "envoy/config/trace/v3/zipkin.proto",
    "envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto",
    "envoy/extensions/bootstrap/internal_listener/v3/internal_listener.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "google/protobuf/wrappers.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    let proto = envoy_types_proto_dir()?;
    let includes = [
        proto.join("data-plane-api"),
        proto.join("xds"),
        proto.join("protoc-gen-validate"),
        proto.join("googleapis"),
        proto.join("cel-spec/proto"),
        proto.join("opentelemetry-proto"),
        proto.join("client_model"),
    ];
    let set = protox::compile(ROOTS, includes)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&set))?;
    Ok(())
}

/// Where cargo unpacked `envoy-types` (its `proto/` folder), asked of `cargo metadata` so that
/// no registry layout is assumed.
fn envoy_types_proto_dir() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("Cargo.toml");
    // Only this platform's packages: cargo has downloaded exactly those for the build, so the
    // offline query succeeds (an unfiltered one wants every platform's crates, e.g. windows-sys).
    let target = std::env::var("TARGET")?;
    let query = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &target,
        ]);
        if offline {
            c.arg("--offline");
        }
        c.arg("--manifest-path").arg(&manifest).output()
    };
    let mut out = query(true)?;
    if !out.status.success() {
        out = query(false)?; // a registry lookup is the only way left
    }
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    let manifest_path = packages
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("cargo metadata: envoy-types not found")?;
    let dir = PathBuf::from(manifest_path)
        .parent()
        .ok_or("envoy-types manifest has no parent")?
        .join("proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    Ok(dir)
}

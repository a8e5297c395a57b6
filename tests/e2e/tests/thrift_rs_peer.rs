//! The Rust `thrift` 0.17 server (`tests/peers/thrift-rs`) behind the real Envoy 1.40 bridge,
//! called by the Apache Thrift Python client: a one-way call, then two-way calls on the same
//! client connection, for framed and buffered × binary and compact.
//!
//! That server answers an unknown-method delivery probe with UNKNOWN_METHOD but does not skip
//! the call's arguments, so it then closes the connection (`codecs/thrift/tests/live_peers.rs`
//! shows it without Envoy); with a probe, the next two-way call on that pooled connection was
//! lost (`envoy 503 … connection termination`). The Thrift codec's default acknowledgement is
//! therefore to close the server connection once the one-way call is written (`oneway_ack:
//! close`), and the route retries a reset that happens before a request was written: every
//! call here succeeds.
//!
//! With the native back (engines `native` and `mix`) the bridge acknowledges the one-way call
//! to the router itself once it is written, and the connection stays open.
//!
//! Skipped with a note when the Python peers are not installed, unless `MELTEMI_REQUIRE_PEERS=1`.

use meltemi_e2e::bootstrap::{Bridge, Destination, Engine};
use meltemi_e2e::envoy::Envoy;
use meltemi_e2e::thrift_peer::{peers_available, Client, Impl, Server};
use meltemi_e2e::workspace;
use serde_json::json;

/// Transport × protocol combinations the Rust crate serves (it has no THeader).
const COMBOS: [(&str, &str); 4] = [
    ("framed", "binary"),
    ("framed", "compact"),
    ("buffered", "binary"),
    ("buffered", "compact"),
];

fn apache_client_one_way_then_two_way_calls_to_the_rust_thrift_server(engine: Engine) {
    if !peers_available() {
        return;
    }
    let wasm = workspace::build_for(engine, "meltemi-thrift");
    let mut failures = Vec::new();
    for (transport, protocol) in COMBOS {
        let tag = format!("rs-{transport}-{protocol}");
        let server = Server::start_rust(transport, protocol, &tag);
        let (port, admin) = (workspace::free_port(), workspace::free_port());
        let codec_transport = if transport == "buffered" {
            "unframed"
        } else {
            transport
        };
        let config = Bridge {
            protocol: "thrift",
            wasm: &wasm,
            engine,
            module: "meltemi_thrift",
            front: json!({
                "service": "echo",
                "codec": {"transport": codec_transport, "protocol": protocol}
            }),
            back: json!({"codec": {"transport": "auto", "protocol": "auto"}}),
            listen_port: port,
            admin_port: admin,
            destinations: vec![Destination {
                cluster: "rs".into(),
                port: server.port,
            }],
            virtual_hosts: vec![json!({
                "name": "echo", "domains": ["echo"],
                "routes": [{"match": {"prefix": "/echo/"}, "route": meltemi_e2e::bootstrap::route_action("rs")}]
            })],
            http_filters: vec![],
        }
        .render();
        let envoy = Envoy::start(
            &format!("thrift-rs-{transport}-{protocol}-{}", engine.name()),
            &config,
            admin,
        );
        let client = Client::new(Impl::Apache, transport, protocol, port, "oneway").arg("--msg");
        let out = client.arg("hi").run();
        let want = [
            "oneway delivered".to_owned(),
            format!("echo {tag}:hi"),
            "add -3".to_owned(),
            format!("echo {tag}:hi-2"),
        ];
        if !(out.success() && out.lines() == want) {
            failures.push(format!(
                "{transport}/{protocol}: exit {:?}\n--- got\n{}\n--- want\n{}\n--- stderr\n{}\n\
                 --- server\n{}\n--- envoy (last 30 lines)\n{}",
                out.status,
                out.stdout,
                want.join("\n"),
                out.stderr,
                server.log(),
                tail(&envoy.log(), 30)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

meltemi_e2e::on_every_engine!(apache_client_one_way_then_two_way_calls_to_the_rust_thrift_server);

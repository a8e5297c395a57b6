//! The Rust `thrift` 0.17 server (`tests/peers/thrift-rs`) behind the real Envoy 1.40 bridge,
//! called by the Apache Thrift Python client: a one-way call, then two-way calls on the same
//! client connection, for framed and buffered × binary and compact.
//!
//! That server answers the bridge's one-way delivery probe (a call to an unknown method) with
//! UNKNOWN_METHOD but does not skip the call's arguments, so it then closes the connection
//! (`codecs/thrift/tests/live_peers.rs` shows it without Envoy). A two-way call that Envoy's
//! pool sends on that upstream connection is lost: the client sees a TApplicationException
//! `envoy 503: upstream connect error or disconnect/reset before headers. reset reason:
//! connection termination`, the server logs `invalid thrift version`. With binary the server
//! waits for four bytes of the next "message", so the close always comes after Envoy reused the
//! connection (every run); with compact it may close first and the pool then reconnects (some
//! runs pass). Issue 8 item 7: until the one-way
//! acknowledgement strategy changes in the SDK's back transcoder, this test fails and is
//! ignored; run it with `cargo test -p meltemi-e2e --test thrift_rs_peer -- --ignored`.
//!
//! Skipped with a note when the Python peers are not installed, unless `MELTEMI_REQUIRE_PEERS=1`.

use meltemi_e2e::bootstrap::{Bridge, Destination};
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

#[test]
fn apache_client_one_way_then_two_way_calls_to_the_rust_thrift_server() {
    if !peers_available() {
        return;
    }
    let wasm = workspace::build_wasm("meltemi-thrift");
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
                "routes": [{"match": {"prefix": "/echo/"}, "route": {"cluster": "rs", "timeout": "10s"}}]
            })],
            http_filters: vec![],
        }
        .render();
        let envoy = Envoy::start(&format!("thrift-rs-{transport}-{protocol}"), &config, admin);
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

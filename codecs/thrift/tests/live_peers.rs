//! Against real Thrift peers (tests/peers/thrift, installed by its install.sh): the delivery
//! probe is answered by real servers, and real clients accept the codec's error replies.
//!
//! Skipped (with a note) when the peers are not installed, unless `MELTEMI_REQUIRE_PEERS=1`,
//! which turns a missing peer into a failure (CI sets it after running install.sh): the rule,
//! the ports (below the ephemeral range) and readiness polling are the e2e crate's
//! (`meltemi_e2e::workspace`), shared by every suite.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meltemi_e2e::thrift_peer::{self, peers_dir, python};
use meltemi_e2e::workspace;

use meltemi_sdk::{Codec, ErrorKind, Message, MessageKind};
use meltemi_thrift::{Config, ThriftCodec};

fn peers_available() -> bool {
    thrift_peer::peers_available()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(imp: &str, transport: &str, protocol: &str, extra: &[&str]) -> (Server, u16) {
    let port = workspace::free_port();
    let child = Command::new(python())
        .arg(peers_dir().join(format!("{imp}_server.py")))
        .args([
            "--transport",
            transport,
            "--protocol",
            protocol,
            "--host",
            "127.0.0.1",
            "--tag",
            "v1",
        ])
        .args(["--port", &port.to_string()])
        .args(extra)
        .current_dir(peers_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    if let Err(e) = workspace::wait_accepting(port, &mut server.0, Duration::from_secs(20)) {
        panic!("{imp} server {e}");
    }
    (server, port)
}

fn vector(stem: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/vectors/{stem}.req.bin")),
    )
    .unwrap()
}

/// The `notify` one-way frame from a captured client stream, decoded by `codec`.
fn notify_frame(codec: &mut ThriftCodec, stem: &str) -> (Message, Vec<u8>) {
    let stream = vector(stem);
    let mut buf = &stream[..];
    loop {
        let m = codec.decode(buf).unwrap().unwrap();
        if m.kind == MessageKind::OneWay {
            return (m.clone(), buf[..m.len].to_vec());
        }
        buf = &buf[m.len..];
    }
}

/// Read until `codec` decodes one message, or the peer closes (`None`).
fn read_message(sock: &mut TcpStream, codec: &mut ThriftCodec) -> Option<(Message, Vec<u8>)> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(m) = codec.decode(&buf).unwrap() {
            return Some((m.clone(), buf[..m.len].to_vec()));
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// TApplicationException type field (id 2, i32) with value `ty`, in binary or compact encoding.
/// In compact the field-id delta is 1 after the message field, or 2 when a server (thriftpy2)
/// leaves the message out.
fn has_app_exception_type(frame: &[u8], ty: u8) -> bool {
    let binary = [8, 0, 2, 0, 0, 0, ty];
    frame.windows(7).any(|w| w == binary)
        || frame
            .windows(2)
            .any(|w| w == [0x15, ty * 2] || w == [0x25, ty * 2])
}

/// (server impl, transport, protocol, captured client stream, server flags)
const PROBE_CASES: &[(&str, &str, &str, &str, &[&str])] = &[
    ("py", "buffered", "binary", "py_buffered_binary", &[]),
    ("py", "buffered", "compact", "py_buffered_compact", &[]),
    ("py", "framed", "binary", "py_framed_binary", &[]),
    ("py", "framed", "compact", "py_framed_compact", &[]),
    ("py", "header", "binary", "py_header_binary", &[]),
    ("py", "header", "compact", "py_header_compact", &[]),
    (
        "py",
        "buffered",
        "binary",
        "py_buffered_binary_nonstrict",
        &[],
    ),
    (
        "py",
        "framed",
        "binary",
        "py_framed_binary_mux",
        &["--multiplex", "Echo"],
    ),
    (
        "py",
        "header",
        "binary",
        "py_header_binary_mux",
        &["--multiplex", "Echo"],
    ),
    ("tp2", "buffered", "binary", "tp2_buffered_binary", &[]),
    ("tp2", "buffered", "compact", "tp2_buffered_compact", &[]),
    ("tp2", "framed", "binary", "tp2_framed_binary", &[]),
    ("tp2", "framed", "compact", "tp2_framed_compact", &[]),
    (
        "tp2",
        "framed",
        "binary",
        "tp2_framed_binary_nonstrict",
        &[],
    ),
];

/// thriftpy2's TMultiplexedProcessor (0.7.1) does not check that a method exists on a
/// registered service: `getattr(service, api + "_args")` raises AttributeError and the server
/// drops the connection. So a multiplexed one-way to a thriftpy2 server cannot be acknowledged
/// by the probe (Meltemi then sees a reset, as without a probe). Asserted so an upgrade that
/// fixes it is noticed.
#[test]
fn thriftpy2_multiplexed_server_drops_the_probe() {
    if !peers_available() {
        return;
    }
    let (_server, port) = start_server("tp2", "buffered", "compact", &["--multiplex", "Echo"]);
    let mut codec = ThriftCodec::new(&probing());
    let (oneway, frame) = notify_frame(&mut codec, "tp2_buffered_compact_mux");
    let probe = codec.delivery_probe(&oneway).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.write_all(&frame).unwrap();
    sock.write_all(&probe).unwrap();
    assert!(read_message(&mut sock, &mut ThriftCodec::new(&Config::default())).is_none());
}

#[test]
fn real_servers_answer_the_delivery_probe_with_unknown_method() {
    if !peers_available() {
        return;
    }
    for (imp, transport, protocol, stem, flags) in PROBE_CASES {
        let (_server, port) = start_server(imp, transport, protocol, flags);
        let mut codec = ThriftCodec::new(&probing());
        let (oneway, frame) = notify_frame(&mut codec, stem);
        let probe = codec.delivery_probe(&oneway).unwrap();
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.write_all(&frame).unwrap();
        sock.write_all(&probe).unwrap();
        let mut reader = ThriftCodec::new(&Config::default());
        let (answer, bytes) = read_message(&mut sock, &mut reader).unwrap_or_else(|| {
            panic!("{imp} {stem}: server closed instead of answering the probe")
        });
        assert_eq!(answer.kind, MessageKind::Exception, "{imp} {stem}");
        assert_eq!(answer.request_id, oneway.request_id, "{imp} {stem}");
        assert_eq!(
            answer.metadata.get("method"),
            Some("__meltemi_probe"),
            "{imp} {stem}"
        );
        assert!(
            has_app_exception_type(&bytes, 1),
            "{imp} {stem}: not UNKNOWN_METHOD: {bytes:02x?}"
        );
        eprintln!(
            "{imp} {transport}/{protocol} {stem}: probe answered UNKNOWN_METHOD, {} bytes",
            bytes.len()
        );
    }
}

/// The Rust `thrift` crate's server (0.17, `tests/peers/thrift-rs`) answers the probe with
/// UNKNOWN_METHOD but does not skip the unknown call's arguments, so it then reads them as the
/// next message and closes the connection: a call pooled behind the probe on that connection
/// fails (issue 8 item 7). Asserted so a change on either side is noticed.
#[test]
fn rust_thrift_server_answers_the_probe_then_closes() {
    if !peers_available() {
        return;
    }
    for (transport, protocol, stem) in [
        ("framed", "binary", "py_framed_binary"),
        ("framed", "compact", "py_framed_compact"),
        ("buffered", "binary", "py_buffered_binary"),
        ("buffered", "compact", "py_buffered_compact"),
    ] {
        let server = thrift_peer::Server::start_rust(transport, protocol, "rs");
        let mut codec = ThriftCodec::new(&probing());
        let (oneway, frame) = notify_frame(&mut codec, stem);
        let probe = codec.delivery_probe(&oneway).unwrap();
        let mut sock = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        sock.write_all(&frame).unwrap();
        sock.write_all(&probe).unwrap();
        let mut reader = ThriftCodec::new(&Config::default());
        let (answer, bytes) = read_message(&mut sock, &mut reader)
            .unwrap_or_else(|| panic!("{stem}: closed before answering the probe"));
        assert_eq!(
            (answer.kind, answer.request_id),
            (MessageKind::Exception, oneway.request_id),
            "{stem}"
        );
        assert!(has_app_exception_type(&bytes, 1), "{stem}: {bytes:02x?}");
        // A two-way call written after the probe never gets an answer: the server closed.
        let echo = vector(stem);
        let mut first = ThriftCodec::new(&Config::default());
        let m = first.decode(&echo).unwrap().unwrap();
        let _ = sock.write_all(&echo[..m.len]);
        let next = read_message(&mut sock, &mut ThriftCodec::new(&Config::default()));
        assert!(
            next.is_none(),
            "{stem}: the server answered after the probe: {next:?}"
        );
        eprintln!("rust thrift {transport}/{protocol}: probe answered, then connection closed");
    }
}

/// Observed behaviour, asserted so a peer upgrade that changes it is noticed: Apache Thrift's
/// TMultiplexedProcessor closes the connection on an unknown *service* (so the probe must keep
/// the one-way call's service prefix), thriftpy2's answers UNKNOWN_METHOD. Both answer
/// UNKNOWN_METHOD for an unknown method of a registered service (the probe test above).
#[test]
fn multiplexed_servers_on_unknown_service() {
    if !peers_available() {
        return;
    }
    for (imp, closes) in [("py", true), ("tp2", false)] {
        let (transport, protocol) = ("framed", "binary");
        let (_server, port) = start_server(imp, transport, protocol, &["--multiplex", "Echo"]);
        let mut probe = Vec::new();
        let name = b"Nope:__meltemi_probe";
        probe.extend_from_slice(&(12 + name.len() as u32 + 1).to_be_bytes());
        probe.extend_from_slice(&[0x80, 0x01, 0, 1]);
        probe.extend_from_slice(&(name.len() as u32).to_be_bytes());
        probe.extend_from_slice(name);
        probe.extend_from_slice(&[0, 0, 0, 9, 0]);
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.write_all(&probe).unwrap();
        let got = read_message(&mut sock, &mut ThriftCodec::new(&Config::default()));
        if closes {
            assert!(got.is_none(), "{imp}: expected a close, got {got:?}");
            eprintln!("{imp} multiplexed server: unknown service -> connection closed");
        } else {
            let (m, bytes) = got.unwrap_or_else(|| panic!("{imp}: closed instead of answering"));
            assert_eq!((m.kind, m.request_id), (MessageKind::Exception, 9));
            assert!(has_app_exception_type(&bytes, 1), "{imp}: {bytes:02x?}");
            eprintln!("{imp} multiplexed server: unknown service -> UNKNOWN_METHOD");
        }
    }
}

/// (client impl, transport, protocol, extra client flags)
const CLIENT_CASES: &[(&str, &str, &str, &[&str])] = &[
    ("py", "buffered", "binary", &[]),
    ("py", "buffered", "compact", &[]),
    ("py", "framed", "binary", &[]),
    ("py", "framed", "compact", &[]),
    ("py", "header", "binary", &[]),
    ("py", "header", "compact", &["--header", "x-version=v2"]),
    ("py", "buffered", "binary", &["--non-strict"]),
    ("py", "framed", "compact", &["--multiplex", "Echo"]),
    ("tp2", "buffered", "binary", &[]),
    ("tp2", "buffered", "compact", &[]),
    ("tp2", "framed", "binary", &[]),
    ("tp2", "framed", "compact", &[]),
    ("tp2", "framed", "binary", &["--non-strict"]),
    ("tp2", "buffered", "binary", &["--multiplex", "Echo"]),
];

#[test]
fn real_clients_accept_error_replies() {
    if !peers_available() {
        return;
    }
    for (imp, transport, protocol, flags) in CLIENT_CASES {
        for (kind, ty) in [
            (ErrorKind::RouteNotFound, 1),
            (ErrorKind::Timeout, 6),
            (ErrorKind::BadRequest, 7),
        ] {
            let listener = workspace::listener();
            let port = listener.local_addr().unwrap().port();
            let client = Command::new(python())
                .arg(peers_dir().join(format!("{imp}_client.py")))
                .args([
                    "--transport",
                    transport,
                    "--protocol",
                    protocol,
                    "--host",
                    "127.0.0.1",
                ])
                .args(["--port", &port.to_string(), "--scenario", "echo"])
                .args(*flags)
                .current_dir(peers_dir())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (mut sock, _) = listener.accept().unwrap();
            let mut codec = ThriftCodec::new(&Config::default());
            let (req, _) = read_message(&mut sock, &mut codec).expect("client request");
            let detail = format!("meltemi says {}", kind.as_str());
            let reply = codec.error_reply(&req, kind, &detail).unwrap();
            sock.write_all(&reply).unwrap();
            let out = client.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let want = format!("TApplicationException type={ty} message={detail}");
            assert!(
                stdout.trim() == want,
                "{imp} {transport}/{protocol} {flags:?}: got {stdout:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "{imp} {transport}/{protocol} {flags:?}: client raised our TApplicationException"
        );
    }
}

/// A codec configured to acknowledge one-way calls with the unknown-method probe.
fn probing() -> Config {
    Config {
        oneway_ack: meltemi_thrift::OnewayAck::Probe,
        ..Config::default()
    }
}

//! Envoy's parts around a Meltemi bridge filter, for suites that drive a built bridge module
//! (front and back roles) on the [`Host`].
//!
//! On a real Envoy, the front filter sits under HCM on the client's listener and the back filter
//! under tcp_proxy on an internal listener the router reaches. These helpers play those parts,
//! byte for byte as Envoy 1.40 writes them:
//! - **HCM**: parsing the bridged HTTP/1.1 requests out of the front's read buffer
//!   ([`parse_request`], [`parse_all`], [`rb`]) and consuming them ([`hcm_consume`]); writing
//!   responses and local replies ([`http_response`], [`chunked_response`]) and relaying the
//!   back's responses ([`relay`]);
//! - **the router**: re-writing a request HCM parsed toward the back ([`router_request`]);
//! - **tcp_proxy**: taking everything the back hands on to the server ([`tcp_proxy_take`]).
//!
//! Also here, because they are the same for every protocol: the bridge's own HTTP/1.1 shapes
//! the emulated Envoy exchanges with the filters ([`bridged_request`], [`local_request`],
//! [`back_response`], [`ONEWAY_ACK`]; written from the bridge's documented format, never with
//! the SDK), host-call shorthands that turn any host error into a test failure ([`ok`],
//! [`send`], [`write()`]) and metric lookups ([`stat`], [`counter`]).
//!
//! Every helper panics on anything Envoy or the bridge would never produce (a request that is
//! not `POST`, a missing `content-length`, a partial request in front of HCM): these are test
//! assertions.

use std::fmt::Display;

use crate::{Action, ConnId, Host, HostError};

// ---------------------------------------------------------------------------------------------
// Host calls and metrics.

/// The value of a host call; any failure, a trap most of all, is a test failure.
pub fn ok<T>(r: Result<T, HostError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("host call failed: {e}"),
    }
}

/// Length fields near the top of the 32-bit range that every suite feeds its codec: a frame
/// length computed as `header + field` overflows a 32-bit `usize` (wasm32) for the first two,
/// and the last two are negative as an `i32` (Thrift, Java peers read lengths as signed).
pub const EXTREME_LENGTHS: [u32; 6] = [
    0xFFFF_FFFF,
    0xFFFF_FFF0,
    0xFFFF_FFEF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FF00,
];

/// The client (front) or the router (back) sends `bytes`; returns the filter's action.
pub fn send(host: &mut Host, c: ConnId, bytes: &[u8]) -> Action {
    ok(host.downstream_data(c, bytes, false))
}

/// HCM (front) or the server (back) writes `bytes`; returns what reaches the other end.
pub fn write(host: &mut Host, c: ConnId, bytes: &[u8]) -> Vec<u8> {
    ok(host.upstream_data(c, bytes, false)).1
}

/// The name the filters give metric `name` with `labels` (`name;.;label=.=value…`, which
/// Envoy's `stats_tags` turn back into tags).
pub fn stat(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = name.to_owned();
    for (k, v) in labels {
        s.push_str(&format!(";.;{k}=.={v}"));
    }
    s
}

/// The counter `name` with `labels`, 0 when it was never defined.
pub fn counter(host: &Host, name: &str, labels: &[(&str, &str)]) -> u64 {
    host.counter(&stat(name, labels)).unwrap_or(0)
}

/// The counter of streams closed as undecodable.
pub const DECODE_ERRORS: &str = "meltemi_decode_errors_total";

// ---------------------------------------------------------------------------------------------
// HCM reading the front's requests.

/// One HTTP/1.1 request parsed out of a read buffer.
#[derive(Debug, Clone)]
pub struct Req {
    /// The request path.
    pub path: String,
    /// The headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` bytes).
    pub body: Vec<u8>,
    /// The whole request as it stood in the buffer.
    pub raw: Vec<u8>,
}

impl Req {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one complete `POST` request with a `content-length` at the start of `buf`; `None`
/// when incomplete.
pub fn parse_request(buf: &[u8]) -> Option<Req> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf).expect("valid HTTP/1.1 request head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    assert_eq!(req.method, Some("POST"));
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("content-length");
    if buf.len() < head + len {
        return None;
    }
    Some(Req {
        path: req.path.unwrap().to_owned(),
        headers,
        body: buf[head..head + len].to_vec(),
        raw: buf[..head + len].to_vec(),
    })
}

/// Every request in `buf`; the buffer must hold complete requests and nothing else (no partial
/// frame, no raw protocol bytes ever reach HCM).
pub fn parse_all(buf: &[u8]) -> Vec<Req> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let req = parse_request(rest)
            .unwrap_or_else(|| panic!("partial HTTP request in the read buffer: {rest:?}"));
        rest = &rest[req.raw.len()..];
        out.push(req);
    }
    out
}

/// HCM consumes the first `n` requests of the read buffer (all if `n` is larger).
pub fn hcm_consume(host: &mut Host, c: ConnId, n: usize) -> Vec<Req> {
    let reqs: Vec<Req> = parse_all(host.read_buffer(c)).into_iter().take(n).collect();
    let used = reqs.iter().map(|r| r.raw.len()).sum();
    host.drain_read(c, used);
    reqs
}

/// The bytes with every connection token of `x-meltemi-seq: <16 hex>-<n>` removed: tokens are
/// random per connection, the rest of a bridged request is deterministic.
pub fn strip_tokens(bytes: &[u8]) -> Vec<u8> {
    const NAME: &[u8] = b"x-meltemi-seq: ";
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(NAME) {
            out.extend_from_slice(NAME);
            i += NAME.len();
            let token = &bytes[i..bytes.len().min(i + 17)];
            if token.len() == 17
                && token[16] == b'-'
                && token[..16].iter().all(u8::is_ascii_hexdigit)
            {
                i += 17;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// What HCM would read, tokens stripped (compare with [`bridged_request`] and friends).
pub fn rb(h: &Host, c: ConnId) -> Vec<u8> {
    strip_tokens(h.read_buffer(c))
}

// ---------------------------------------------------------------------------------------------
// HCM writing responses.

/// The `date` header of every response HCM writes (the host's fake clock).
pub const DATE: &str = "date: Thu, 01 Jan 2026 00:00:00 GMT\r\n";

/// A response as HCM writes it: `headers`, a content-length, Envoy's own headers, the body.
pub fn http_response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!(
        "content-length: {}\r\n{DATE}server: envoy\r\n\r\n",
        body.len()
    ));
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The same with a chunked body, cut in chunks of at most `chunk` bytes.
pub fn chunked_response(
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunk: usize,
) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!(
        "transfer-encoding: chunked\r\n{DATE}server: envoy\r\n\r\n"
    ));
    let mut out = s.into_bytes();
    for part in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// HCM relaying the back's response: Envoy's own headers added after the back's.
pub fn relay(back_http: &[u8]) -> Vec<u8> {
    let end = back_http
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let mut out = back_http[..end].to_vec();
    out.extend_from_slice(
        format!("\r\n{DATE}server: envoy\r\nx-envoy-upstream-service-time: 1\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(&back_http[end + 4..]);
    out
}

// ---------------------------------------------------------------------------------------------
// The router and tcp_proxy.

/// What the router sends to the back for a request HCM parsed: the same request line, host and
/// headers, plus Envoy's own headers and `extra` (e.g. route-added mutations).
pub fn router_request(req: &Req, extra: &[(&str, &str)]) -> Vec<u8> {
    let host = req.header("host").unwrap();
    let mut s = format!("POST {} HTTP/1.1\r\nhost: {host}\r\n", req.path);
    for (k, v) in &req.headers {
        if k != "host" && k != "content-length" {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    s.push_str("x-forwarded-proto: http\r\nx-request-id: 6d1c8e4e-0000-4000-8000-000000000001\r\nx-envoy-expected-rq-timeout-ms: 5000\r\n");
    with_body(s, extra, &req.body)
}

/// tcp_proxy takes everything the back left in the read buffer.
pub fn tcp_proxy_take(host: &mut Host, c: ConnId) -> Vec<u8> {
    let out = host.read_buffer(c).to_vec();
    host.drain_read(c, usize::MAX);
    out
}

// ---------------------------------------------------------------------------------------------
// The bridge's HTTP/1.1, the same for every protocol.

/// The request the front writes for a frame: `/<service>/<method>`, the token-stripped
/// sequence number, `host: <service>`, the kind and request id, the frame's metadata `md` as
/// headers, the frame as body.
pub fn bridged_request(
    seq: impl Display,
    service: &str,
    method: &str,
    kind: &str,
    rid: u64,
    md: &[(impl Display, impl Display)],
    frame: &[u8],
) -> Vec<u8> {
    let head = format!(
        "POST /{service}/{method} HTTP/1.1\r\nx-meltemi-seq: {seq}\r\nhost: {service}\r\nx-meltemi-kind: {kind}\r\nx-meltemi-rid: {rid}\r\n"
    );
    with_body(head, md, frame)
}

/// The request the front writes for a message it answers itself (heartbeats, refusals).
pub fn local_request(seq: impl Display, kind: &str) -> Vec<u8> {
    format!(
        "POST /__meltemi/local HTTP/1.1\r\nx-meltemi-seq: {seq}\r\nhost: meltemi.local\r\nx-meltemi-kind: {kind}\r\ncontent-length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The response the back writes for a server frame: the marker headers, the frame's metadata
/// `md` as headers, the frame as body.
pub fn back_response(kind: &str, rid: u64, md: &[(&str, &str)], frame: &[u8]) -> Vec<u8> {
    let head = format!("HTTP/1.1 200 OK\r\nx-meltemi-response: {kind}\r\nx-meltemi-rid: {rid}\r\n");
    with_body(head, md, frame)
}

/// The response the back writes once a one-way call's delivery probe was answered.
pub const ONEWAY_ACK: &[u8] =
    b"HTTP/1.1 200 OK\r\nx-meltemi-response: oneway-ack\r\ncontent-length: 0\r\n\r\n";

/// `head` (a start line and headers, each ending in CRLF), then `headers` one a line, the
/// `content-length` of `body`, the blank line and `body`.
fn with_body(mut head: String, headers: &[(impl Display, impl Display)], body: &[u8]) -> Vec<u8> {
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

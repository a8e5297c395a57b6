//! The conventions both halves of the bridge share: header names, how metadata becomes HTTP
//! headers, how mutations travel, and how Envoy's local-reply status codes map to error kinds.

use crate::{http1, ErrorKind, Metadata};

/// Request header: the message kind (`request`, `oneway`, `heartbeat`).
pub const KIND_HEADER: &str = "x-meltemi-kind";
/// Request and response header: the protocol request id.
pub const RID_HEADER: &str = "x-meltemi-rid";
/// Response header set by the back: the body is a server frame; value = its kind.
pub const RESPONSE_HEADER: &str = "x-meltemi-response";
/// Value of [`RESPONSE_HEADER`] acknowledging a one-way call.
pub const ONEWAY_ACK: &str = "oneway-ack";
/// Repeated header carrying one `key=value` mutation (both parts percent-encoded), added by
/// routes (`request_headers_to_add` / `response_headers_to_add`) and applied by the codec.
pub const MUTATION_HEADER: &str = "x-meltemi-mutation";
/// Prefix for metadata keys that would collide with HTTP or Envoy headers.
pub const RESERVED_PREFIX: &str = "x-meltemi-md-";
/// Authority of requests the front answers itself (heartbeats, refusals). The route
/// configuration should answer it with a `direct_response`; any answer will do.
pub const LOCAL_AUTHORITY: &str = "meltemi.local";
/// Path of such requests.
pub const LOCAL_PATH: &str = "/__meltemi/local";

/// Metadata as HTTP headers: keys lower-cased, reserved names prefixed; entries whose key or
/// value cannot be an HTTP header are left out (they stay in the frame, only routing misses them).
pub fn metadata_headers(metadata: &Metadata) -> Vec<(String, &str)> {
    let mut out = Vec::with_capacity(metadata.len());
    for (key, value) in metadata.iter() {
        if !http1::is_header_value(value) {
            continue;
        }
        let mut name = key.to_ascii_lowercase();
        if !http1::is_header_name(&name) {
            continue;
        }
        if is_reserved(&name) {
            name.insert_str(0, RESERVED_PREFIX);
        }
        out.push((name, value));
    }
    out
}

fn is_reserved(name: &str) -> bool {
    const RESERVED: [&str; 14] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
        "x-request-id",
        "authority",
        "path",
        "method",
    ];
    // `method` collides with nothing in HTTP/1.1, but `:method` pseudo-header matching in
    // routes would confuse users: keep it verbatim.
    (RESERVED.contains(&name) && name != "method")
        || name.starts_with("x-envoy-")
        || name.starts_with("x-meltemi-")
        || name.starts_with("x-forwarded-")
}

/// Collects the mutation carried by [`MUTATION_HEADER`] lines. Malformed lines are skipped.
pub fn mutation_from_headers<'a>(values: impl Iterator<Item = &'a str>) -> Metadata {
    let mut mutation = Metadata::new();
    for value in values {
        // Envoy may fold repeated headers into one comma-separated value.
        for pair in value.split(',') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if let (Some(k), Some(v)) = (http1::decode_pair_part(k), http1::decode_pair_part(v)) {
                if !k.is_empty() {
                    mutation.set(&k, v);
                }
            }
        }
    }
    mutation
}

/// Encodes one mutation entry as a [`MUTATION_HEADER`] value (what the controller emits).
pub fn mutation_header_value(key: &str, value: &str) -> String {
    let mut s = String::new();
    http1::encode_pair_part(&mut s, key);
    s.push('=');
    http1::encode_pair_part(&mut s, value);
    s
}

/// The error kind of an Envoy local reply (or of any answer without the back's marker).
pub fn error_kind_for_status(status: u16) -> ErrorKind {
    match status {
        404 => ErrorKind::RouteNotFound,
        403 | 401 => ErrorKind::Unauthorized,
        429 => ErrorKind::OverLimit,
        503 | 502 => ErrorKind::Unavailable,
        504 | 408 => ErrorKind::Timeout,
        400 | 413 | 431 => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_and_invalid_metadata() {
        let md: Metadata = [
            ("Host", "x"),
            ("method", "m"),
            ("bad key", "v"),
            ("ok", "line\nbreak"),
            ("Version", "1.0"),
        ]
        .into_iter()
        .collect();
        let h = metadata_headers(&md);
        let got: Vec<_> = h.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            vec![
                ("x-meltemi-md-host", "x"),
                ("method", "m"),
                ("version", "1.0")
            ]
        );
    }

    #[test]
    fn mutation_round_trip_keeps_case_and_specials() {
        let a = mutation_header_value("Env", "can=ary,1");
        let b = mutation_header_value("x", "y");
        let m = mutation_from_headers([a.as_str(), b.as_str()].into_iter());
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            vec![("Env", "can=ary,1"), ("x", "y")]
        );
        let folded = format!("{a}, {b}");
        assert_eq!(mutation_from_headers([folded.as_str()].into_iter()), m);
    }
}

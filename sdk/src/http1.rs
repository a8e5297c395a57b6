//! HTTP/1.1 framing between the bridge and Envoy's HTTP connection manager.
//!
//! Only what the bridge itself emits and receives: requests and responses with a
//! `content-length` body (chunked bodies are read, never written). Header parsing is `httparse`;
//! this module adds message boundaries and the small writers. Kept apart from the transcoders so
//! that an HTTP/2 framing can replace it for multiplexing protocols.

use std::fmt::Write as _;

/// Most headers one bridged message may carry (metadata plus Envoy's own).
pub const MAX_HEADERS: usize = 128;

/// A parsed request or response head with its body location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Response status code (0 for requests).
    pub status: u16,
    /// Request path ("" for responses).
    pub path: String,
    /// Headers in wire order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked when the message was chunked).
    pub body: Vec<u8>,
    /// Bytes of the buffer the whole message used.
    pub len: usize,
}

impl Parsed {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a (possibly repeated) header.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why bytes from Envoy could not be read as HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.1 as the bridge writes it.
    Malformed(String),
    /// A body over the caller's limit.
    TooLarge(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(m) | Self::TooLarge(m) => write!(f, "http/1.1: {m}"),
        }
    }
}

/// A message head whose body may not have arrived yet (for passing large bodies through
/// as they arrive instead of holding them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Response status (0 for requests).
    pub status: u16,
    /// Headers in wire order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The `content-length`, or `None` for a chunked or unframed body.
    pub body_len: Option<usize>,
}

impl Head {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn head(headers: Vec<(String, String)>, status: u16, len: usize) -> Head {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let chunked = find("transfer-encoding").is_some();
    let body_len = match find("content-length") {
        _ if chunked => None,
        Some(v) => v.trim().parse::<usize>().ok(),
        None => Some(0),
    };
    Head {
        status,
        headers,
        len,
        body_len,
    }
}

/// Moves up to `remaining` body bytes from the start of `rest` to `out` (a body passed on as it
/// arrives); returns how many, and counts them off `remaining`.
pub fn pass_body(remaining: &mut usize, rest: &[u8], out: &mut Vec<u8>) -> usize {
    let n = (*remaining).min(rest.len());
    out.extend_from_slice(rest.get(..n).unwrap_or(&[]));
    *remaining = remaining.saturating_sub(n);
    n
}

/// The head of the request at the start of `buf`; `Ok(None)` when it is incomplete.
pub fn request_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(head(owned_headers(req.headers)?, 0, n))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HttpError::Malformed(format!("bad request head: {e}"))),
    }
}

/// The head of the response at the start of `buf`; `Ok(None)` when it is incomplete.
pub fn response_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            Ok(Some(head(owned_headers(resp.headers)?, status, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HttpError::Malformed(format!("bad response head: {e}"))),
    }
}

/// Parse one request at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<Option<Parsed>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(format!("bad request head: {e}"))),
    };
    let path = req.path.unwrap_or("").to_owned();
    let headers = owned_headers(req.headers)?;
    finish(buf, head_len, 0, path, headers, max_body)
}

/// Parse one response at the start of `buf`; `Ok(None)` when more bytes are needed.
/// Informational (1xx) responses are returned like any other; callers skip them.
pub fn parse_response(buf: &[u8], max_body: usize) -> Result<Option<Parsed>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(format!("bad response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let headers = owned_headers(resp.headers)?;
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some(Parsed {
            status,
            path: String::new(),
            headers,
            body: Vec::new(),
            len: head_len,
        }));
    }
    finish(buf, head_len, status, String::new(), headers, max_body)
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Result<Vec<(String, String)>, HttpError> {
    headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::Malformed(format!("header {} is not UTF-8", h.name)))?;
            Ok((h.name.to_ascii_lowercase(), value.to_owned()))
        })
        .collect()
}

fn finish(
    buf: &[u8],
    head_len: usize,
    status: u16,
    path: String,
    headers: Vec<(String, String)>,
    max_body: usize,
) -> Result<Option<Parsed>, HttpError> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        return match dechunk(buf.get(head_len..).unwrap_or(&[]), max_body)? {
            None => Ok(None),
            Some((body, used)) => Ok(Some(Parsed {
                status,
                path,
                headers,
                body,
                len: head_len.saturating_add(used),
            })),
        };
    }
    let body_len = match find("content-length") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| HttpError::Malformed(format!("bad content-length {v:?}")))?,
        None => 0,
    };
    if body_len > max_body {
        return Err(HttpError::TooLarge(format!(
            "body of {body_len} bytes exceeds the {max_body} byte limit"
        )));
    }
    let end = head_len
        .checked_add(body_len)
        .ok_or_else(|| HttpError::Malformed("length overflow".into()))?;
    let Some(body) = buf.get(head_len..end) else {
        return Ok(None);
    };
    Ok(Some(Parsed {
        status,
        path,
        headers,
        body: body.to_vec(),
        len: end,
    }))
}

fn dechunk(mut buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let start = buf.len();
    let mut body = Vec::new();
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HttpError::Malformed("bad chunk size".into())),
        };
        let size =
            usize::try_from(size).map_err(|_| HttpError::Malformed("chunk too large".into()))?;
        if body.len().saturating_add(size) > max_body {
            return Err(HttpError::TooLarge(format!(
                "chunked body exceeds the {max_body} byte limit"
            )));
        }
        buf = buf.get(size_len..).unwrap_or(&[]);
        if size == 0 {
            // Trailers are not used by the bridge; accept an empty trailer section only.
            let Some(end) = buf.get(..2) else {
                return Ok(None);
            };
            if end != b"\r\n" {
                return Err(HttpError::Malformed("trailers are not supported".into()));
            }
            let used = start.saturating_sub(buf.len()).saturating_add(2);
            return Ok(Some((body, used)));
        }
        let (Some(chunk), Some(crlf)) = (buf.get(..size), buf.get(size..size.saturating_add(2)))
        else {
            return Ok(None);
        };
        if crlf.len() < 2 {
            return Ok(None);
        }
        body.extend_from_slice(chunk);
        if crlf != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        buf = buf.get(size.saturating_add(2)..).unwrap_or(&[]);
    }
}

/// Writes a request head and body. The sequence header comes first, carrying the connection's
/// secret `token` and `seq`, so that the front can recognise its own requests when Envoy shows
/// unconsumed bytes to the filter again — and a client, who never sees the token, cannot forge
/// them.
pub fn write_request<'a>(
    out: &mut Vec<u8>,
    token: u64,
    seq: u64,
    authority: &str,
    path: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) {
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "POST {path} HTTP/1.1\r\n{SEQ_HEADER}: {token:016x}-{seq}\r\nhost: {authority}\r\n"
    );
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// Writes a `200 OK` response head and body.
pub fn write_response<'a>(
    out: &mut Vec<u8>,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) {
    let mut head = String::with_capacity(128);
    head.push_str("HTTP/1.1 200 OK\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// Name of the sequence header [`write_request`] puts first.
pub const SEQ_HEADER: &str = "x-meltemi-seq";

/// The sequence number of a request written by [`write_request`] with `token` that starts
/// `buf`, if any.
pub fn leading_seq(buf: &[u8], token: u64) -> Option<u64> {
    if !buf.starts_with(b"POST /") {
        return None;
    }
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let rest = buf
        .get(line_end.saturating_add(2)..)?
        .strip_prefix(SEQ_HEADER.as_bytes())?
        .strip_prefix(b": ")?;
    let mut expected = [0u8; 17];
    let hex = format!("{token:016x}-");
    expected.copy_from_slice(hex.as_bytes());
    let rest = rest.strip_prefix(&expected[..])?;
    let digits_end = rest.iter().position(|b| !b.is_ascii_digit())?;
    if rest.get(digits_end..digits_end.saturating_add(2)) != Some(b"\r\n") {
        return None;
    }
    std::str::from_utf8(rest.get(..digits_end)?)
        .ok()?
        .parse()
        .ok()
}

/// True for a valid HTTP header name (RFC 9110 token) in lower case.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// True for a header value Envoy and the bridge can carry unchanged.
pub fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        && !value.starts_with([' ', '\t'])
        && !value.ends_with([' ', '\t'])
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters and `:@`).
pub fn encode_path_segment(out: &mut String, segment: &str) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@$".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The HTTP authority for a service name: the name itself when it is a valid host (letters,
/// digits, `-._~`), else percent-encoded, so that no client-chosen name can make Envoy refuse
/// the request (a 400 would close the connection and every call pipelined on it). Route
/// domains for such names must use the same encoding.
pub fn encode_authority(out: &mut String, service: &str) {
    if service.is_empty() {
        out.push_str("unknown");
        return;
    }
    for b in service.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Percent-encodes `=` , `%` and non-printable bytes so a key/value pair fits one header value.
pub fn encode_pair_part(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | '=' | ',' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Inverse of [`encode_pair_part`]; `None` for invalid escapes.
pub fn decode_pair_part(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.as_bytes().iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let (hi, lo) = (bytes.next()?, bytes.next()?);
            let hex = [*hi, *lo];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_seq() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            0xabc,
            42,
            "svc",
            "/svc/m",
            [("method", "m")],
            b"\x00\x01body",
        );
        assert_eq!(leading_seq(&out, 0xabc), Some(42));
        assert_eq!(leading_seq(&out, 0xabd), None, "another connection's token");
        let p = parse_request(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(p.path, "/svc/m");
        assert_eq!(p.header("host"), Some("svc"));
        assert_eq!(p.header("method"), Some("m"));
        assert_eq!(p.body, b"\x00\x01body");
        assert_eq!(p.len, out.len());
        for cut in 0..out.len() {
            assert_eq!(
                parse_request(&out[..cut], 1 << 20).unwrap(),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn chunked_response_is_dechunked() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\n!!!\r\n0\r\n\r\nNEXT";
        let p = parse_response(raw, 100).unwrap().unwrap();
        assert_eq!(p.status, 503);
        assert_eq!(p.body, b"hello!!!");
        assert_eq!(&raw[p.len..], b"NEXT");
    }

    #[test]
    fn oversize_body_is_refused_as_too_large() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n";
        assert!(matches!(
            parse_response(raw, 10),
            Err(HttpError::TooLarge(_))
        ));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nb\r\n";
        assert!(matches!(
            parse_response(chunked, 10),
            Err(HttpError::TooLarge(_))
        ));
    }

    #[test]
    fn authorities_are_always_valid() {
        let mut s = String::new();
        encode_authority(&mut s, "com.acme.Orders");
        assert_eq!(s, "com.acme.Orders");
        s.clear();
        encode_authority(&mut s, "a b/c@d\u{e9}");
        assert_eq!(s, "a%20b%2Fc%40d%C3%A9");
        s.clear();
        encode_authority(&mut s, "");
        assert_eq!(s, "unknown");
    }

    #[test]
    fn pair_encoding_round_trips() {
        let mut s = String::new();
        encode_pair_part(&mut s, "a=b%c,\n\u{e9}");
        assert!(is_header_value(&s));
        assert_eq!(decode_pair_part(&s).as_deref(), Some("a=b%c,\n\u{e9}"));
    }

    #[test]
    fn foreign_bytes_have_no_seq() {
        assert_eq!(leading_seq(b"POST /a HTTP/1.1\r\nhost: x\r\n", 1), None);
        assert_eq!(
            leading_seq(b"POST /a HTTP/1.1\r\nx-meltemi-seq: 1\r\n", 1),
            None
        );
        assert_eq!(leading_seq(b"\xda\xbb\x02", 1), None);
    }
}

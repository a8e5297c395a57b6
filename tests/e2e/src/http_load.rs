//! A minimal HTTP/1.1 keep-alive echo client and server for the benchmarks' HCM floor: the
//! cost of Envoy's HTTP connection manager and router alone (an HTTP/1.1 client, HCM, an
//! HTTP/1.1 server), with no Meltemi module in the path. Every HCM-based bridge pays at least
//! this, so it shows how far a ratio target is reachable on the machine at hand.
//!
//! Hand-written for the same reason as [`crate::thrift_load`]: the load generator must not be
//! the bottleneck, and only `content-length` bodies are needed (Envoy's router forwards the
//! server's `content-length` answers as they are).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// A `POST /<service>/<method>` request for `authority` carrying `body`.
pub fn request(authority: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one message's head and `content-length` body; returns the status (0 for a request)
/// and the body. `None` at a clean end of the stream.
fn read_message(r: &mut BufReader<TcpStream>) -> io::Result<Option<(u16, Vec<u8>)>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::other("bad content-length"))?;
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some((status, body)))
}

/// Starts a server answering every request with `200` and the request's body; returns its
/// port. Threads end when their connection closes.
pub fn start_echo_server() -> u16 {
    crate::load::start_server(serve)
}

fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Ok(Some((_, body))) = read_message(&mut reader) {
        let mut answer =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(&body);
        if writer.write_all(&answer).is_err() {
            return;
        }
    }
}

/// A blocking keep-alive client connection.
pub struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Client {
        let writer = crate::load::connect(port);
        let reader = BufReader::new(writer.try_clone().expect("clone the socket"));
        Client { writer, reader }
    }

    /// Sends a request and reads the answer: its status and body.
    pub fn call(&mut self, request: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.writer.write_all(request)?;
        read_message(&mut self.reader)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_server_answers_with_the_body_on_one_connection() {
        let port = start_echo_server();
        let mut client = Client::connect(port);
        for body in [&b"hello"[..], &[b'x'; 300][..], b""] {
            let (status, got) = client
                .call(&request("echo", "/echo/echo", body))
                .expect("answer");
            assert_eq!((status, got.as_slice()), (200, body));
        }
    }
}

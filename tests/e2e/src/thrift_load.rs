//! A minimal framed/binary Thrift client and server for benchmarks, hand-written so that the
//! load generator, not a Python peer, is never the bottleneck. Correctness against real
//! Thrift implementations is proven by the Thrift suites; this only has to be fast.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// A framed, strict-binary CALL of `method(1: string msg)`.
pub fn call_frame(method: &str, seqid: i32, msg: &[u8]) -> Vec<u8> {
    message(1, method, seqid, 11, 1, msg)
}

fn message(
    kind: u8,
    method: &str,
    seqid: i32,
    field_type: u8,
    field_id: i16,
    value: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + method.len() + value.len());
    m.extend_from_slice(&[0x80, 0x01, 0x00, kind]);
    m.extend_from_slice(&(method.len() as u32).to_be_bytes());
    m.extend_from_slice(method.as_bytes());
    m.extend_from_slice(&seqid.to_be_bytes());
    m.push(field_type);
    m.extend_from_slice(&field_id.to_be_bytes());
    m.extend_from_slice(&(value.len() as u32).to_be_bytes());
    m.extend_from_slice(value);
    m.push(0);
    let mut framed = (m.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&m);
    framed
}

/// Reads one framed message (without its length prefix).
pub fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// The seqid of a strict-binary message body.
pub fn seqid(body: &[u8]) -> Option<i32> {
    let name_len = u32::from_be_bytes(body.get(4..8)?.try_into().ok()?) as usize;
    let at = 8 + name_len;
    Some(i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

/// Starts a server that answers every call with a REPLY carrying the call's argument as the
/// result string; returns its port. Threads end when their connection closes.
pub fn start_echo_server() -> u16 {
    crate::load::start_server(serve)
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    while let Ok(body) = read_frame(&mut conn) {
        let Some(seq) = seqid(&body) else { return };
        let name_len = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        let method = String::from_utf8_lossy(&body[8..8 + name_len]).into_owned();
        // Argument string: after seqid, field header (3 bytes), length (4 bytes).
        let at = 8 + name_len + 4 + 3;
        let arg_len = body
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0);
        let arg = body.get(at + 4..at + 4 + arg_len).unwrap_or(&[]);
        if conn
            .write_all(&message(2, &method, seq, 11, 0, arg))
            .is_err()
        {
            return;
        }
    }
}

/// A blocking client connection.
pub struct Client(TcpStream);

impl Client {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Client {
        Client(crate::load::connect(port))
    }

    /// Sends a frame and reads the answer's body.
    pub fn call(&mut self, frame: &[u8]) -> io::Result<Vec<u8>> {
        self.0.write_all(frame)?;
        read_frame(&mut self.0)
    }
}

/// One connection keeping `depth` echo calls in flight (a new call as each answer arrives,
/// answers matched by seqid) for `total` calls: a pipelining Thrift client, as
/// [`crate::dubbo_load::run_in_flight`] is a multiplexing Dubbo consumer. Returns the
/// measurement of Envoy `envoy_pid`; a lost or foreign answer fails.
pub fn run_in_flight(
    envoy_pid: u32,
    port: u16,
    depth: u64,
    total: u64,
) -> crate::load::Measurement {
    use std::collections::HashMap;
    use std::time::Instant;
    let call = |seq: u64| call_frame("echo", seq as i32, &[b'x'; 128]);
    let mut conn = crate::load::connect(port);
    let mut latency = crate::load::histogram();
    let cpu_before = crate::load::process_cpu(envoy_pid);
    let start = Instant::now();
    let mut waiting: HashMap<i32, Instant> = HashMap::new();
    let mut next = 1u64;
    let mut batch = Vec::new();
    while next <= depth.min(total) {
        batch.extend(call(next));
        waiting.insert(next as i32, Instant::now());
        next += 1;
    }
    conn.write_all(&batch).expect("write calls");
    let mut answered = 0u64;
    while answered < total {
        let body = read_frame(&mut conn).expect("an answer");
        let seq = seqid(&body).expect("a seqid");
        let sent = waiting
            .remove(&seq)
            .unwrap_or_else(|| panic!("answer {seq} not awaited"));
        latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
        answered += 1;
        if next <= total {
            conn.write_all(&call(next)).expect("write call");
            waiting.insert(next as i32, Instant::now());
            next += 1;
        }
    }
    crate::load::Measurement {
        requests: answered,
        elapsed: start.elapsed(),
        envoy_cpu: crate::load::process_cpu(envoy_pid).saturating_sub(cpu_before),
        latency,
    }
}

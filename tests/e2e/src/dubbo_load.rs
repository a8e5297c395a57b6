//! A minimal Dubbo2 client and server for benchmarks: they replay frames captured from real
//! peers (a dubbo-ssl-python `echo` call and the Caucho provider's answer, in
//! `codecs/dubbo/tests/vectors/`) with the request id patched, so that the load generator is
//! never the bottleneck. Correctness against real peers is proven by the Dubbo suites.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use crate::workspace;

static REQUESTS: &[u8] =
    include_bytes!("../../../codecs/dubbo/tests/vectors/python-to-java.c2s.bin");
static RESPONSES: &[u8] =
    include_bytes!("../../../codecs/dubbo/tests/vectors/python-to-java.s2c.bin");

fn first_frame(stream: &[u8]) -> Vec<u8> {
    let len = u32::from_be_bytes([stream[12], stream[13], stream[14], stream[15]]) as usize;
    stream[..16 + len].to_vec()
}

/// The captured `EchoService.echo("hello")` request with request id `id`.
pub fn echo_request(id: u64) -> Vec<u8> {
    let mut f = first_frame(REQUESTS);
    f[4..12].copy_from_slice(&id.to_be_bytes());
    f
}

/// Reads one frame.
pub fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut f = vec![0u8; 16];
    s.read_exact(&mut f)?;
    let len = u32::from_be_bytes([f[12], f[13], f[14], f[15]]) as usize;
    f.resize(16 + len, 0);
    s.read_exact(&mut f[16..])?;
    Ok(f)
}

/// The request id of a frame.
pub fn request_id(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[4..12].try_into().unwrap_or([0; 8]))
}

/// Starts a provider that answers every request with the captured response; returns its port.
pub fn start_echo_provider() -> u16 {
    let listener = workspace::listener();
    let port = listener.local_addr().expect("addr").port();
    let answer = first_frame(RESPONSES);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut answer = answer.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                while let Ok(req) = read_frame(&mut conn) {
                    answer[4..12].copy_from_slice(&req[4..12]);
                    if conn.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A blocking consumer connection.
pub struct Client(TcpStream);

impl Client {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Client {
        Client(crate::load::connect(port))
    }

    /// Sends a frame and reads the answer.
    pub fn call(&mut self, frame: &[u8]) -> io::Result<Vec<u8>> {
        self.0.write_all(frame)?;
        read_frame(&mut self.0)
    }
}

/// One connection keeping `depth` echo calls in flight (a new call as each answer arrives,
/// answers matched by id, any order) for `total` calls: how a multiplexing Dubbo consumer loads
/// a proxy. Returns the measurement of Envoy `envoy_pid`; a lost or foreign answer fails.
pub fn run_in_flight(
    envoy_pid: u32,
    port: u16,
    depth: u64,
    total: u64,
) -> crate::load::Measurement {
    use std::collections::HashMap;
    use std::time::Instant;
    let mut conn = crate::load::connect(port);
    let mut latency = crate::load::histogram();
    let cpu_before = crate::load::process_cpu(envoy_pid);
    let start = Instant::now();
    let mut waiting: HashMap<u64, Instant> = HashMap::new();
    let mut next = 1u64;
    let mut batch = Vec::new();
    while next <= depth.min(total) {
        batch.extend(echo_request(next));
        waiting.insert(next, Instant::now());
        next += 1;
    }
    conn.write_all(&batch).expect("write calls");
    let mut answered = 0u64;
    while answered < total {
        let frame = read_frame(&mut conn).expect("an answer");
        let id = request_id(&frame);
        let sent = waiting
            .remove(&id)
            .unwrap_or_else(|| panic!("answer {id} not awaited"));
        latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
        answered += 1;
        if next <= total {
            conn.write_all(&echo_request(next)).expect("write call");
            waiting.insert(next, Instant::now());
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

//! A load generator and Envoy CPU accounting for benchmarks.
//!
//! No load tool for these protocols exists on these machines, so this is ours: `connections`
//! threads, each sending one request and waiting for its answer, for a fixed number of
//! requests — as fast as answers come (closed loop), or paced at a fixed rate, where each
//! call's latency is measured from when it was due, not from when it was sent (so a stall
//! shows in the percentiles instead of hiding as fewer requests: no coordinated omission).
//! Envoy's CPU time comes from `/proc/<pid>/stat` (user + system), read before and after, so
//! the figure is CPU per request, independent of how busy the load generator is.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Requests answered.
    pub requests: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Envoy CPU time (user + system) spent during the run.
    pub envoy_cpu: Duration,
    /// Per-call latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Measurement {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Envoy CPU microseconds per request.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.envoy_cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }

    /// Latency percentile `q` (0..=100) in microseconds.
    pub fn latency_us(&self, q: f64) -> u64 {
        self.latency.value_at_percentile(q)
    }
}

/// An empty latency histogram (1 µs .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// A blocking client socket to 127.0.0.1:`port`: no Nagle delay (request/answer traffic), and
/// a 10 s read timeout so a lost answer fails the run instead of hanging it.
pub fn connect(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// CPU time (user + system) a process has used so far.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // fields[0] is the state (3rd field overall), so utime (14th) is fields[11].
    let total = ticks(11) + ticks(12);
    Duration::from_secs_f64(total as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // Linux reports CPU times in USER_HZ, which is 100 on every mainstream configuration.
    100.0
}

/// Runs `per_connection` calls on each of `connections` threads, closed loop; `call(i)`
/// performs one request/answer on the thread's own connection and returns whether the answer
/// was right.
pub fn run<F, C>(envoy_pid: u32, connections: usize, per_connection: u64, connect: F) -> Measurement
where
    F: Fn() -> C + Sync,
    C: FnMut(u64) -> bool,
{
    run_paced(envoy_pid, connections, per_connection, None, connect)
}

/// [`run`], with each connection's calls due every `interval` when given (a fixed total rate
/// of `connections / interval`); latency counts from when each call was due.
pub fn run_paced<F, C>(
    envoy_pid: u32,
    connections: usize,
    per_connection: u64,
    interval: Option<Duration>,
    connect: F,
) -> Measurement
where
    F: Fn() -> C + Sync,
    C: FnMut(u64) -> bool,
{
    let cpu_before = process_cpu(envoy_pid);
    let start = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                scope.spawn(|| {
                    let mut call = connect();
                    let mut latency = histogram();
                    let mut ok = 0u64;
                    let begin = Instant::now();
                    for i in 0..per_connection {
                        let due = match interval {
                            Some(every) => {
                                let due = begin + every.mul_f64(i as f64);
                                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                    std::thread::sleep(wait);
                                }
                                due
                            }
                            None => Instant::now(),
                        };
                        if call(i) {
                            ok += 1;
                        }
                        let us = due.elapsed().as_micros().max(1) as u64;
                        latency.saturating_record(us);
                    }
                    (ok, latency)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let elapsed = start.elapsed();
    let envoy_cpu = process_cpu(envoy_pid).saturating_sub(cpu_before);
    let mut latency = histogram();
    let mut requests = 0;
    for (ok, h) in results {
        requests += ok;
        let _ = latency.add(&h);
    }
    Measurement {
        requests,
        elapsed,
        envoy_cpu,
        latency,
    }
}

/// Starts a server on a fresh 127.0.0.1 port that runs `serve` on a thread of its own for
/// each connection (the benchmarks' echo servers); returns the port. Threads end when their
/// connection closes.
pub fn start_server(serve: fn(std::net::TcpStream)) -> u16 {
    let listener = crate::workspace::listener();
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    port
}

//! Fuzzes the front transcoder with the MiniRPC codec in both directions, the way Envoy drives
//! it: client bytes arrive in arbitrary pieces into a persistent read buffer the front rewrites,
//! HCM consumes whole requests at arbitrary points and writes arbitrary (raw or well-formed)
//! responses in arbitrary pieces, under varying limits.
//!
//! Nothing may panic, the read buffer handed to HCM must only ever hold complete HTTP requests,
//! and the active-requests gauge must never go negative and must be 0 after close.
//!
//! Input: one byte of configuration, then operations `op` (low 3 bits: what, high 5 bits: the
//! length of the operand that follows).
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use meltemi_sdk::config::{FilterConfig, Limits, Role};
use meltemi_sdk::front::Front;
use meltemi_sdk::stats::{self, Recorder};
use meltemi_sdk::{http1, Metadata};
use minirpc::{frame, MiniRpc, MiniRpcConfig};

/// Splits the read buffer into complete requests; anything else is a bridge bug.
fn requests(buf: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let p = http1::parse_request(&buf[at..], usize::MAX)
            .expect("the front wrote invalid HTTP")
            .expect("the front left a partial request for HCM");
        lens.push(p.len);
        at += p.len;
    }
    lens
}

fn active(sink: &Recorder) -> i64 {
    sink.gauge_total(stats::ACTIVE, &[])
}

/// A well-formed MiniRPC frame built from fuzz bytes.
fn minirpc_frame(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let id = u64::from(bytes.first().copied().unwrap_or(0) % 4);
    let mut headers = Metadata::new();
    headers.push("service", "demo");
    let split = bytes.len() / 2;
    let method = String::from_utf8_lossy(&bytes[..split]).into_owned();
    headers.push("method", method);
    let mut out = Vec::new();
    frame::write(&mut out, kind, id, &headers, &bytes[split..]).expect("small frame");
    out
}

/// A well-formed HCM response built from fuzz bytes.
fn hcm_response(bytes: &[u8]) -> Vec<u8> {
    let sel = bytes.first().copied().unwrap_or(0);
    let body_src = bytes.get(1..).unwrap_or(&[]);
    let (status, mut headers, body) = match sel % 8 {
        0 | 1 => (
            "200 OK",
            vec!["x-meltemi-response: response".to_owned()],
            minirpc_frame(2, body_src),
        ),
        2 => (
            "200 OK",
            vec!["x-meltemi-response: exception".to_owned()],
            minirpc_frame(6, body_src),
        ),
        3 => (
            "200 OK",
            vec!["x-meltemi-response: oneway-ack".to_owned()],
            Vec::new(),
        ),
        4 => ("404 Not Found", Vec::new(), Vec::new()),
        5 => ("503 Service Unavailable", Vec::new(), body_src.to_vec()),
        6 => ("100 Continue", Vec::new(), Vec::new()),
        _ => (
            "200 OK",
            vec!["x-meltemi-response: response".to_owned()],
            body_src.to_vec(),
        ),
    };
    if sel & 0x10 != 0 {
        headers.push(format!(
            "x-meltemi-mutation: {}",
            String::from_utf8_lossy(&body_src[..body_src.len().min(8)]).replace(['\r', '\n'], "")
        ));
    }
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    let mut out;
    if status.starts_with("100") {
        head.push_str("\r\n");
        out = head.into_bytes();
    } else if sel & 0x20 != 0 {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
        out = head.into_bytes();
        for part in body.chunks(1 + usize::from(sel >> 6)) {
            out.extend(format!("{:x}\r\n", part.len()).into_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        head.push_str(&format!(
            "content-length: {}\r\nserver: envoy\r\n\r\n",
            body.len()
        ));
        out = head.into_bytes();
        out.extend_from_slice(&body);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_frame_bytes: if sel & 1 != 0 { 96 } else { 1 << 20 },
        max_pending_requests: 1 + usize::from((sel >> 1) & 3),
        max_metadata_entries: if sel & 8 != 0 { 2 } else { 64 },
        max_metadata_bytes: if sel & 16 != 0 { 24 } else { 16 << 10 },
        ..Limits::default()
    };
    let config = Rc::new(FilterConfig {
        role: Role::Front,
        service: (sel & 32 != 0).then(|| "demo.svc".to_owned()),
        limits,
        known_services: Vec::new(),
        known_methods: Vec::new(),
        propagate_headers: Vec::new(),
        hcm_protocol: meltemi_sdk::config::HcmProtocol::Http1,
        codec: MiniRpcConfig::default(),
    });
    let mut front = Front::<MiniRpc>::new(config);
    let mut sink = Recorder::default();
    let mut read: Vec<u8> = Vec::new();
    let mut now = 0u64;
    while let Some((&op, rest)) = data.split_first() {
        let len = (usize::from(op >> 3) + 1).min(rest.len());
        let (operand, rest) = rest.split_at(len);
        data = rest;
        let client_bytes = match op & 7 {
            0 | 1 => Some(operand.to_vec()),
            2 => Some(minirpc_frame([1, 3, 4, 2][usize::from(op >> 6)], operand)),
            3 => {
                // HCM consumes some whole requests.
                let lens = requests(&read);
                let n = usize::from(operand.first().copied().unwrap_or(0)) % (lens.len() + 1);
                read.drain(..lens[..n].iter().sum::<usize>());
                None
            }
            4 | 5 => {
                let bytes = if op & 7 == 4 {
                    operand.to_vec()
                } else {
                    hcm_response(operand)
                };
                let cut = usize::from(op >> 3) % (bytes.len() + 1);
                for part in [&bytes[..cut], &bytes[cut..]] {
                    if front.on_hcm_data(part, now, &mut sink).is_err() {
                        front.on_close(&mut sink);
                        assert_eq!(active(&sink), 0);
                        return;
                    }
                }
                None
            }
            6 => {
                now += u64::from(op) * 1_000_000;
                None
            }
            _ => break,
        };
        if let Some(bytes) = client_bytes {
            read.extend_from_slice(&bytes);
            match front.on_client_data(&read, now, &mut sink) {
                Ok(Some(new)) => read = new,
                Ok(None) => {}
                Err(_) => {
                    front.on_close(&mut sink);
                    assert_eq!(active(&sink), 0);
                    return;
                }
            }
            requests(&read);
        }
        assert!(active(&sink) >= 0, "active gauge went negative");
    }
    front.on_close(&mut sink);
    assert_eq!(active(&sink), 0);
});

//! Fuzzes the front's HTTP/2 client (`meltemi_sdk::http2::Client`), the part that reads what
//! HCM writes back: streams are opened with fuzz-chosen bodies, then HCM's side is raw bytes or
//! frames built from fuzz bytes (every frame type, real and made-up stream ids, HPACK blocks
//! that are valid or not, split across CONTINUATION), fed in arbitrary pieces, under small and
//! large windows, body limits and VM budgets.
//!
//! Nothing may panic; an answer or reset is only reported for a stream that was opened and at
//! most once per stream; after an error nothing more is fed (the front closes the client
//! connection); and when the client is dropped every byte it charged to the VM budget is
//! released.
//!
//! Input: one byte of configuration, then operations `op` (low 3 bits: what, high 5 bits: the
//! length of the operand that follows).
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use meltemi_sdk::hpack;
use meltemi_sdk::http2::{frame, Client, Event, Settings};
use meltemi_sdk::vm::VmShared;

/// A header block: `:status` (indexed or literal) and some fields, maybe cut short.
fn header_block(bytes: &[u8]) -> Vec<u8> {
    let sel = bytes.first().copied().unwrap_or(0);
    let rest = bytes.get(1..).unwrap_or(&[]);
    let mut block = Vec::new();
    match sel % 4 {
        0 => hpack::encode_indexed(&mut block, 8),  // :status 200
        1 => hpack::encode_indexed(&mut block, 13), // :status 404
        2 => hpack::encode_literal(&mut block, 8, ":status", "503"),
        _ => {}
    }
    let split = rest.len() / 2;
    let name = String::from_utf8_lossy(&rest[..split]).to_ascii_lowercase();
    let value = String::from_utf8_lossy(&rest[split..]).into_owned();
    if sel & 4 != 0 {
        hpack::encode_literal(&mut block, 0, "x-meltemi-response", "response");
    }
    if sel & 8 != 0 {
        hpack::encode_literal(&mut block, 0, &name, &value);
    }
    if sel & 16 != 0 {
        block.extend_from_slice(rest); // raw HPACK bytes
    }
    if sel & 32 != 0 {
        let keep = block.len() / 2;
        block.truncate(keep);
    }
    block
}

/// A frame HCM could send (or not): type, flags, stream and payload from fuzz bytes.
fn hcm_frame(opened: &[u32], bytes: &[u8]) -> Vec<u8> {
    let (Some(&kind), Some(&flags), Some(&pick)) = (bytes.first(), bytes.get(1), bytes.get(2))
    else {
        return Vec::new();
    };
    let payload = bytes.get(3..).unwrap_or(&[]);
    let stream = match pick % 4 {
        0 => 0,
        1 | 2 if !opened.is_empty() => opened[usize::from(pick >> 2) % opened.len()],
        _ => u32::from(pick >> 2),
    };
    match kind % 10 {
        // HEADERS with a real block, END_HEADERS/END_STREAM from the flags.
        1 => frame(1, flags & 0x05, stream, &header_block(payload)),
        // HEADERS without END_HEADERS, then CONTINUATION with the rest.
        9 => {
            let block = header_block(payload);
            let cut = block.len() / 2;
            let mut out = frame(1, flags & 0x01, stream, &block[..cut]);
            out.extend(frame(9, 0x04, stream, &block[cut..]));
            out
        }
        k => frame(k, flags, stream, payload),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut data)) = data.split_first() else {
        return;
    };
    let shared = if sel & 1 != 0 {
        VmShared::new(4096, 16, 16)
    } else {
        VmShared::unbounded()
    };
    let settings = Settings {
        stream_window: if sel & 2 != 0 { 16 } else { 65_535 },
        connection_window: if sel & 4 != 0 { 64 } else { 1 << 20 },
        max_body: if sel & 8 != 0 { 32 } else { 1 << 20 },
        max_pending_body: if sel & 16 != 0 { 32 } else { 1 << 20 },
    };
    {
        let mut client = Client::new(shared.clone(), settings);
        let mut opened: Vec<u32> = Vec::new();
        let mut finished: BTreeSet<u32> = BTreeSet::new();
        let mut events = Vec::new();
        let mut out = Vec::new();
        while let Some((&op, rest)) = data.split_first() {
            let len = (usize::from(op >> 3) + 1).min(rest.len());
            let (operand, rest) = rest.split_at(len);
            data = rest;
            let input = match op & 7 {
                0 => {
                    if client.can_open() {
                        let path = String::from_utf8_lossy(operand).into_owned();
                        match client.open("svc", &path, [("x-meltemi-id", "1")], operand) {
                            Ok(id) => {
                                assert!(!opened.contains(&id), "stream {id} opened twice");
                                opened.push(id);
                            }
                            Err(_) => break,
                        }
                    }
                    continue;
                }
                1 | 2 => operand.to_vec(),
                3..=5 => hcm_frame(&opened, operand),
                6 => {
                    client.take_output(&mut out);
                    out.clear();
                    continue;
                }
                _ => break,
            };
            let cut = usize::from(op >> 3) % (input.len() + 1);
            let mut failed = false;
            for part in [&input[..cut], &input[cut..]] {
                events.clear();
                if client.receive(part, &mut events).is_err() {
                    failed = true;
                }
                for e in &events {
                    match e {
                        Event::Answer { stream, .. } | Event::Reset { stream, .. } => {
                            assert!(opened.contains(stream), "event for unopened {stream}");
                            assert!(finished.insert(*stream), "stream {stream} ended twice");
                        }
                        Event::GoAway { .. } => {}
                    }
                }
                if failed {
                    break;
                }
            }
            if failed {
                break;
            }
            assert!(client.streams() <= opened.len());
        }
    }
    assert_eq!(
        shared.budget.used(),
        0,
        "bytes left charged to the VM budget"
    );
});

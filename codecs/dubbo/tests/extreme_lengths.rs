//! Length fields near `u32::MAX` (and negative as `i32`, as Java reads them) never make the
//! codec panic: a header announcing such a body is refused at once, whatever the configured
//! `max_body_bytes`, and any 4-byte window of a captured frame overwritten with such a value
//! (Hessian string, binary, list and class-field counts) is refused, awaited or decoded within
//! the buffer. The same frames go through the built module in
//! `tests/wasm-host/tests/bridge_dubbo.rs`, where `usize` is 32 bits.

use std::path::Path;

use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::Codec;

use meltemi_sdk::testing::EXTREME_LENGTHS as EXTREMES;

/// Every frame of every captured stream, cut by its header.
fn captured_frames() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".bin") {
            continue;
        }
        let mut rest = &std::fs::read(&path).unwrap()[..];
        while rest.len() >= 16 {
            let len = 16 + u32::from_be_bytes(rest[12..16].try_into().unwrap()) as usize;
            out.push((name.clone(), rest[..len].to_vec()));
            rest = &rest[len..];
        }
    }
    assert!(out.len() >= 40, "vectors missing in {dir:?}");
    out
}

fn codec(max_body_bytes: usize) -> DubboCodec {
    DubboCodec::new(&DubboConfig { max_body_bytes })
}

#[test]
fn a_body_length_near_u32_max_is_refused_at_once_whatever_the_limit() {
    let (_, frame) = captured_frames().remove(0);
    for limit in [16 << 20, usize::MAX] {
        for v in EXTREMES {
            let mut bytes = frame.clone();
            bytes[12..16].copy_from_slice(&v.to_be_bytes());
            for cut in [16, 17, bytes.len()] {
                // Java reads the length as an i32: above i32::MAX it is corrupt even when the
                // configured limit allows it; 0x7FFF_FFFF is within i32 but over 16 MiB.
                let r = codec(limit).decode(&bytes[..cut]);
                if v <= i32::MAX as u32 && limit == usize::MAX {
                    assert_eq!(r, Ok(None), "{v:#x}, {cut} bytes: awaited");
                } else {
                    assert!(r.is_err(), "{v:#x}, {cut} bytes, limit {limit}: refused");
                }
            }
        }
    }
}

#[test]
fn every_window_overwritten_with_an_extreme_value_never_panics() {
    for (name, frame) in captured_frames() {
        for at in 16..frame.len() {
            for v in EXTREMES {
                let mut bytes = frame.clone();
                let end = (at + 4).min(bytes.len());
                bytes[at..end].copy_from_slice(&v.to_be_bytes()[..end - at]);
                match codec(16 << 20).decode(&bytes) {
                    Ok(Some(m)) => assert_eq!(m.len, bytes.len(), "{name} @{at} = {v:#x}"),
                    Ok(None) => panic!("{name} @{at} = {v:#x}: a whole frame is never awaited"),
                    Err(_) => {}
                }
            }
        }
    }
}

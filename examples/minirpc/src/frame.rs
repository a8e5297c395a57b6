//! Building MiniRPC frames: used by the codec for replies and mutations, and by clients and
//! servers that speak MiniRPC (the end-to-end tests use it too).

use meltemi_sdk::Metadata;

/// Appends one frame to `out`. Fails when a header or the body does not fit the wire format.
pub fn write(
    out: &mut Vec<u8>,
    kind: u8,
    id: u64,
    headers: &Metadata,
    payload: &[u8],
) -> Result<(), String> {
    let count = u16::try_from(headers.len()).map_err(|_| "more than 65535 headers".to_string())?;
    let start = out.len();
    out.extend_from_slice(b"MR");
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_be_bytes());
    for (k, v) in headers.iter() {
        for s in [k, v] {
            let len = u16::try_from(s.len()).map_err(|_| format!("header of {} bytes", s.len()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.extend_from_slice(payload);
    let body = u32::try_from(out.len() - start - 16).map_err(|_| "frame over 4 GiB".to_string())?;
    out[start + 12..start + 16].copy_from_slice(&body.to_be_bytes());
    Ok(())
}

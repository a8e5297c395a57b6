//! Building MiniRPC frames: used by the codec for replies and mutations, and by clients and
//! servers that speak MiniRPC (the end-to-end tests use it too).

use meltemi_sdk::Metadata;

/// Length of the fixed part before the header block: magic, kind, flags, id, len.
const FIXED: usize = 16;
/// Offset of the `len` field in the fixed part.
const LEN_AT: usize = 12;

/// Appends one frame to `out`. Fails when a header or the body does not fit the wire format;
/// `out` is then left as it was.
pub fn write(
    out: &mut Vec<u8>,
    kind: u8,
    id: u64,
    headers: &Metadata,
    payload: &[u8],
) -> Result<(), String> {
    let start = out.len();
    let written = append(out, kind, id, headers, payload);
    if written.is_err() {
        // A caller may keep using `out`: never leave half a frame in it.
        out.truncate(start);
    }
    written
}

fn append(
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
    // The whole frame, fixed part included, must stay within u32 (what the decoder accepts).
    let frame_len = out.len().saturating_sub(start);
    u32::try_from(frame_len).map_err(|_| "frame over 4 GiB".to_string())?;
    let body = u32::try_from(frame_len.saturating_sub(FIXED))
        .map_err(|_| "frame over 4 GiB".to_string())?;
    let slot = start
        .checked_add(LEN_AT)
        .and_then(|at| out.get_mut(at..))
        .and_then(|rest| rest.get_mut(..4))
        .ok_or_else(|| "frame shorter than its fixed part".to_string())?;
    slot.copy_from_slice(&body.to_be_bytes());
    Ok(())
}

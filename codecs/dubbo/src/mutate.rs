//! Attachment rewriting: a mutation sets keys in a body's attachments map.
//!
//! Only the attachment bytes change. Existing entries keep their bytes and order; a key that
//! is already there gets its value replaced in place, a new key is appended before the map's
//! closing `'Z'`. Written values are strings, which take no Hessian back-reference slot, so no
//! later `'Q'` reference is renumbered; a value that itself holds a list, map or object is
//! refused rather than replaced for the same reason.

use meltemi_sdk::{CodecError, Metadata};

use crate::body::Attachments;
use crate::hessian::writer::write_string;

/// `body` with `mutation` applied to its attachments `att`.
pub fn rewrite(body: &[u8], att: &Attachments, mutation: &Metadata) -> Result<Vec<u8>, CodecError> {
    let mut replaced: Vec<Option<&str>> = vec![None; att.entries.len()];
    let mut appended: Vec<(&str, &str)> = Vec::new();
    for (k, v) in mutation.iter() {
        let mut existing = att.entries.iter().zip(replaced.iter_mut());
        if let Some((a, slot)) = existing.find(|(a, _)| a.key.as_deref() == Some(k)) {
            if !a.replaceable {
                return Err(CodecError::unsupported(format!(
                    "attachment {k:?} holds a structured value; not replaced"
                )));
            }
            *slot = Some(v);
        } else if let Some(e) = appended.iter_mut().find(|(ak, _)| *ak == k) {
            e.1 = v;
        } else {
            appended.push((k, v));
        }
    }

    let slice = |r: std::ops::Range<usize>| {
        body.get(r)
            .ok_or_else(|| CodecError::malformed("attachment offsets outside the body"))
    };
    // A guess only (each written string has a few bytes of tag and length): saturating is fine.
    let mut out = Vec::with_capacity(
        body.len()
            .saturating_add(mutation.byte_len())
            .saturating_add(mutation.len().saturating_mul(8))
            .saturating_add(2),
    );
    out.extend_from_slice(slice(0..att.span.start)?);
    let mut pos = att.span.start;
    match att.close {
        Some(close) => {
            for (a, new) in att.entries.iter().zip(&replaced) {
                if let Some(v) = new {
                    out.extend_from_slice(slice(pos..a.value_span.start)?);
                    write_string(&mut out, v);
                    pos = a.value_span.end;
                }
            }
            out.extend_from_slice(slice(pos..close)?);
        }
        // No map (or a null one) in the body: write a fresh untyped map in its place.
        None => out.push(b'H'),
    }
    for (k, v) in appended {
        write_string(&mut out, k);
        write_string(&mut out, v);
    }
    out.push(b'Z');
    out.extend_from_slice(slice(att.span.end..body.len())?);
    Ok(out)
}

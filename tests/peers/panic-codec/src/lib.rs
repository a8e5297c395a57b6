//! A codec that panics on purpose — only for the test proving that a codec's panic inside the
//! native module closes its own connection and nothing else (`tests/e2e/tests/native.rs`).
//!
//! The protocol is one line per message: `Q <id> <method> <text>\n` is a call, `A <id> <text>\n`
//! its answer. A call whose text contains `PANIC` makes `decode` panic.

use meltemi_sdk::{Codec, CodecError, ErrorKind, Message, MessageKind, Metadata};

/// Longest line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct LineConfig {}

/// The line protocol.
pub struct Line;

impl Codec for Line {
    const PROTOCOL: &'static str = "line";
    type Config = LineConfig;

    fn new(_config: &LineConfig) -> Self {
        Line
    }

    #[allow(clippy::panic)]
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, CodecError> {
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            return if buf.len() > MAX_LINE {
                Err(CodecError::malformed("line too long"))
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(buf.get(..end).unwrap_or(&[]))
            .map_err(|_| CodecError::malformed("not UTF-8"))?;
        let mut parts = line.splitn(4, ' ');
        let kind = match parts.next() {
            Some("Q") => MessageKind::Request,
            Some("A") => MessageKind::Response,
            _ => return Err(CodecError::malformed("neither Q nor A")),
        };
        let id = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CodecError::malformed("no id"))?;
        let mut metadata = Metadata::new();
        if kind == MessageKind::Request {
            metadata.push("service", "line");
            metadata.push("method", parts.next().unwrap_or("none"));
            if parts.next().is_some_and(|text| text.contains("PANIC")) {
                panic!("the line codec was told to panic");
            }
        }
        Ok(Some(
            Message::new(end.saturating_add(1), kind, id).with_metadata(metadata),
        ))
    }

    fn encode(
        &mut self,
        frame: &[u8],
        _message: &Message,
        _mutation: &Metadata,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.extend_from_slice(frame);
        Ok(())
    }

    fn error_reply(
        &mut self,
        request: &Message,
        kind: ErrorKind,
        _detail: &str,
    ) -> Option<Vec<u8>> {
        Some(format!("A {} error:{}\n", request.request_id, kind.as_str()).into_bytes())
    }
}

meltemi_sdk::export_codec!(Line);

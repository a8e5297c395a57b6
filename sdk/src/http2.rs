//! HTTP/2 (h2c, prior knowledge) client framing toward Envoy's HTTP connection manager.
//!
//! Sans-IO: [`Client::open`] turns one bridged request into HEADERS (+CONTINUATION) and DATA
//! frames, [`Client::receive`] reads HCM's frames and reports finished answers, resets and
//! GOAWAY as [`Event`]s, and everything meant for HCM (our preface and SETTINGS, SETTINGS and
//! PING acknowledgements, WINDOW_UPDATE, DATA waiting for flow-control credit) accumulates in
//! one output queue that the glue drains with [`Client::take_output`] whenever it may write
//! toward HCM (in wasm: during a read callback, or from the root timer while the read buffer is
//! reachable — hence [`Client::has_output`]).
//!
//! HTTP/1.1 serialises the calls of a client connection (HCM parses one request at a time);
//! here every call is its own stream, so answers come back as soon as each is ready. Every
//! byte held between callbacks (partial frames, answers' bodies, DATA waiting for credit,
//! queued output) is a [`HeldBytes`] charged to the VM budget.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::hpack;
use crate::vm::{HeldBytes, OverLimit, VmShared};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 1;
const SETTINGS_ENABLE_PUSH: u16 = 2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 6;

/// RST_STREAM / GOAWAY code REFUSED_STREAM: the request was not processed.
pub const REFUSED_STREAM: u32 = 7;
/// RST_STREAM code ENHANCE_YOUR_CALM (HCM's overload protection).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Frame header length.
const HEAD_LEN: usize = 9;
/// The protocol's initial window and smallest maximum frame size.
const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_MAX_FRAME: usize = 16_384;
/// Largest window (2^31 - 1).
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest stream id.
const MAX_STREAM_ID: u32 = 0x7fff_ffff;
/// Most bytes of one header block (HEADERS + CONTINUATION) we collect before decoding.
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// Most decoded header bytes per answer (names + values); we advertise it too.
pub const MAX_HEADER_LIST: usize = 64 << 10;

/// Why the HTTP/2 connection toward HCM cannot go on (the client connection is closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Error {
    /// HCM sent something that breaks the protocol.
    Protocol(String),
    /// A buffer would pass its limit or the VM budget.
    Over(OverLimit),
}

impl std::fmt::Display for H2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol(m) => write!(f, "http/2: {m}"),
            Self::Over(o) => write!(f, "http/2: buffer over {}", o.reason()),
        }
    }
}

fn protocol(m: impl Into<String>) -> H2Error {
    H2Error::Protocol(m.into())
}

/// What [`Client::receive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete answer on `stream`.
    Answer {
        /// The stream.
        stream: u32,
        /// `:status`.
        status: u16,
        /// The other headers, in order.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// HCM reset `stream` (or it was above a GOAWAY's last stream id: [`REFUSED_STREAM`]).
    Reset {
        /// The stream.
        stream: u32,
        /// The error code.
        code: u32,
    },
    /// HCM is going away: no new stream may be opened; the ones it will not process were
    /// reported as [`Event::Reset`] before this event.
    GoAway {
        /// Highest stream HCM may still answer.
        last_stream: u32,
        /// The error code (0: graceful drain).
        code: u32,
    },
}

/// Our side's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise: how much of each answer HCM may send
    /// before our WINDOW_UPDATE.
    pub stream_window: u32,
    /// Connection window we open with a WINDOW_UPDATE right after the preface.
    pub connection_window: u32,
    /// Largest answer body accepted (a larger one is a protocol error).
    pub max_body: usize,
    /// Most bytes of one request's body waiting for HCM's flow-control credit.
    pub max_pending_body: usize,
}

/// One request stream.
#[derive(Debug)]
struct Stream {
    /// HCM's credit for our DATA on this stream.
    send_window: i64,
    /// Body bytes not sent yet (no credit).
    pending: HeldBytes,
    /// Whether our END_STREAM is still to be sent (with the last pending byte).
    end_pending: bool,
    /// The answer's status and headers, once received.
    head: Option<(u16, Vec<(String, String)>)>,
    body: HeldBytes,
    /// Answer bytes taken since our last WINDOW_UPDATE for this stream.
    unacked: u32,
}

/// A header block being collected across CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// Held between callbacks when CONTINUATION frames arrive later: charged like any buffer.
    bytes: HeldBytes,
}

/// The client side of one HTTP/2 connection to HCM.
#[derive(Debug)]
pub struct Client {
    shared: Rc<VmShared>,
    settings: Settings,
    out: HeldBytes,
    input: HeldBytes,
    streams: BTreeMap<u32, Stream>,
    next_id: u32,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    peer_max_streams: u32,
    decoder: hpack::Decoder,
    block: Option<Block>,
    /// Answer bytes taken on the connection since our last connection WINDOW_UPDATE.
    conn_unacked: u32,
    goaway: Option<u32>,
    /// Our SETTINGS have been acknowledged.
    acked: bool,
}

/// Writes a frame header.
fn head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).min(0x00ff_ffff);
    out.extend_from_slice(len.to_be_bytes().get(1..).unwrap_or(&[]));
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & MAX_STREAM_ID).to_be_bytes());
}

/// A whole frame as bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN.saturating_add(payload.len()));
    head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// A frame header read from the wire.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let h = buf.get(..HEAD_LEN)?;
    let len = u32::from_be_bytes([0, *h.first()?, *h.get(1)?, *h.get(2)?]);
    Some(Head {
        len: usize::try_from(len).ok()?,
        kind: *h.get(3)?,
        flags: *h.get(4)?,
        stream: be32(h.get(5..)?)? & MAX_STREAM_ID,
    })
}

/// The payload of a frame that may be padded (DATA, HEADERS), padding removed.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], H2Error> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = usize::from(
        *payload
            .first()
            .ok_or_else(|| protocol("padded frame too short"))?,
    );
    let end = payload
        .len()
        .checked_sub(pad)
        .filter(|end| *end >= 1)
        .ok_or_else(|| protocol("padding longer than the frame"))?;
    payload
        .get(1..end)
        .ok_or_else(|| protocol("padding longer than the frame"))
}

impl Client {
    /// A connection whose first output is the preface, our SETTINGS (no push, no dynamic
    /// table for HCM's encoder, our windows) and the connection WINDOW_UPDATE.
    pub fn new(shared: Rc<VmShared>, settings: Settings) -> Self {
        let mut first = PREFACE.to_vec();
        let mut s = Vec::new();
        for (id, value) in [
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
            (
                SETTINGS_INITIAL_WINDOW_SIZE,
                settings.stream_window.min(0x7fff_ffff),
            ),
            (
                SETTINGS_MAX_HEADER_LIST_SIZE,
                u32::try_from(MAX_HEADER_LIST).unwrap_or(u32::MAX),
            ),
        ] {
            s.extend_from_slice(&id.to_be_bytes());
            s.extend_from_slice(&u32::to_be_bytes(value));
        }
        first.extend_from_slice(&frame(SETTINGS, 0, 0, &s));
        let more =
            i64::from(settings.connection_window.min(0x7fff_ffff)).saturating_sub(DEFAULT_WINDOW);
        if let Ok(more) = u32::try_from(more) {
            if more > 0 {
                first.extend_from_slice(&frame(WINDOW_UPDATE, 0, 0, &more.to_be_bytes()));
            }
        }
        let mut out = HeldBytes::new(Rc::clone(&shared));
        // A few dozen bytes: always within any budget worth running with.
        let _ = out.try_extend(&first, usize::MAX);
        Self {
            input: HeldBytes::new(Rc::clone(&shared)),
            shared,
            settings,
            out,
            streams: BTreeMap::new(),
            next_id: 1,
            send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME,
            peer_max_streams: u32::MAX,
            decoder: hpack::Decoder::new(),
            block: None,
            conn_unacked: 0,
            goaway: None,
            acked: false,
        }
    }

    /// Whether another stream may be opened now (HCM's concurrency limit, GOAWAY, ids left).
    pub fn can_open(&self) -> bool {
        self.goaway.is_none()
            && self.next_id <= MAX_STREAM_ID
            && u32::try_from(self.streams.len()).unwrap_or(u32::MAX) < self.peer_max_streams
    }

    /// Whether HCM said GOAWAY.
    pub fn going_away(&self) -> bool {
        self.goaway.is_some()
    }

    /// Open streams.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether bytes wait to be written toward HCM.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Moves every byte waiting for HCM to `dst`.
    pub fn take_output(&mut self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(self.out.as_slice());
        self.out.clear();
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), H2Error> {
        self.out
            .try_extend(bytes, usize::MAX)
            .map_err(H2Error::Over)
    }

    /// Opens a stream for one request: `headers` are the HEADERS fields after the four
    /// pseudo-headers (`:method POST`, `:scheme http`, `authority`, `path`), `body` the DATA.
    /// Returns the stream id. Body bytes beyond HCM's credit wait in the stream.
    pub fn open<'a>(
        &mut self,
        authority: &str,
        path: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Result<u32, H2Error> {
        if !self.can_open() {
            return Err(protocol("no stream can be opened"));
        }
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(2);
        let mut block = Vec::with_capacity(256);
        hpack::encode_indexed(&mut block, 3); // :method POST
        hpack::encode_indexed(&mut block, 6); // :scheme http
        hpack::encode_literal(&mut block, 1, ":authority", authority);
        hpack::encode_literal(&mut block, 4, ":path", path);
        for (name, value) in headers {
            hpack::encode_literal(&mut block, hpack::static_name_index(name), name, value);
        }
        let len = body.len().to_string();
        hpack::encode_literal(&mut block, 28, "content-length", &len);
        let mut frames = Vec::with_capacity(block.len().saturating_add(32));
        let mut chunks = block.chunks(self.peer_max_frame.max(1)).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut flags = if last { END_HEADERS } else { 0 };
            if first && body.is_empty() {
                flags |= END_STREAM;
            }
            head(&mut frames, chunk.len(), kind, flags, id);
            frames.extend_from_slice(chunk);
            first = false;
        }
        self.emit(&frames)?;
        let mut stream = Stream {
            send_window: self.peer_initial_window,
            pending: HeldBytes::new(Rc::clone(&self.shared)),
            end_pending: !body.is_empty(),
            head: None,
            body: HeldBytes::new(Rc::clone(&self.shared)),
            unacked: 0,
        };
        let sent = self.send_data(id, &mut stream, body)?;
        stream
            .pending
            .try_extend(
                body.get(sent..).unwrap_or(&[]),
                self.settings.max_pending_body,
            )
            .map_err(H2Error::Over)?;
        self.streams.insert(id, stream);
        Ok(id)
    }

    /// Sends as much of `data` (the start of what `stream` still has to send) as the windows
    /// allow, END_STREAM with its last byte; returns how many bytes were sent.
    fn send_data(&mut self, id: u32, stream: &mut Stream, data: &[u8]) -> Result<usize, H2Error> {
        let credit = self.send_window.min(stream.send_window).max(0);
        let n = usize::try_from(credit)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let mut frames = Vec::with_capacity(n.saturating_add(HEAD_LEN.saturating_mul(2)));
        let chunks = data.get(..n).unwrap_or(&[]);
        let mut iter = chunks.chunks(self.peer_max_frame.max(1)).peekable();
        while let Some(chunk) = iter.next() {
            let done = iter.peek().is_none() && n == data.len();
            let flags = if done && stream.end_pending {
                END_STREAM
            } else {
                0
            };
            head(&mut frames, chunk.len(), DATA, flags, id);
            frames.extend_from_slice(chunk);
        }
        if n == data.len() && n > 0 {
            stream.end_pending = false;
        }
        let sent = i64::try_from(n).unwrap_or(i64::MAX);
        self.send_window = self.send_window.saturating_sub(sent);
        stream.send_window = stream.send_window.saturating_sub(sent);
        self.emit(&frames)?;
        Ok(n)
    }

    /// Sends what waiting streams can now that HCM gave credit, lowest stream (oldest) first.
    fn flush_pending(&mut self) -> Result<(), H2Error> {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.pending.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if self.send_window <= 0 {
                break;
            }
            let Some(mut stream) = self.streams.remove(&id) else {
                continue;
            };
            let pending =
                std::mem::replace(&mut stream.pending, HeldBytes::new(Rc::clone(&self.shared)));
            let result = self.send_data(id, &mut stream, pending.as_slice());
            stream.pending = pending;
            if let Ok(n) = &result {
                stream.pending.consume(*n);
            }
            self.streams.insert(id, stream);
            result?;
        }
        Ok(())
    }

    /// Reads HCM's bytes; answers, resets and GOAWAY go to `events`.
    pub fn receive(&mut self, data: &[u8], events: &mut Vec<Event>) -> Result<(), H2Error> {
        if self.input.is_empty() {
            let used = self.frames(data, events)?;
            self.input
                .try_extend(data.get(used..).unwrap_or(&[]), usize::MAX)
                .map_err(H2Error::Over)
        } else {
            self.input
                .try_extend(data, usize::MAX)
                .map_err(H2Error::Over)?;
            let input = std::mem::replace(&mut self.input, HeldBytes::new(Rc::clone(&self.shared)));
            let result = self.frames(input.as_slice(), events);
            self.input = input;
            self.input.consume(result?);
            Ok(())
        }
    }

    /// Handles the complete frames at the start of `src`; returns the bytes they used.
    fn frames(&mut self, src: &[u8], events: &mut Vec<Event>) -> Result<usize, H2Error> {
        let mut offset = 0usize;
        loop {
            let rest = src.get(offset..).unwrap_or(&[]);
            let Some(h) = parse_head(rest) else {
                return Ok(offset);
            };
            // We never raise SETTINGS_MAX_FRAME_SIZE, so HCM may not send more.
            if h.len > DEFAULT_MAX_FRAME {
                return Err(protocol(format!("frame of {} bytes", h.len)));
            }
            let end = HEAD_LEN.saturating_add(h.len);
            let Some(payload) = rest.get(HEAD_LEN..end) else {
                return Ok(offset);
            };
            offset = offset.saturating_add(end);
            self.frame(h, payload, events)?;
        }
    }

    fn frame(&mut self, h: Head, payload: &[u8], events: &mut Vec<Event>) -> Result<(), H2Error> {
        if let Some(block) = &self.block {
            if h.kind != CONTINUATION || h.stream != block.stream {
                return Err(protocol("header block interrupted"));
            }
        }
        match h.kind {
            DATA => self.on_data(h, payload, events),
            HEADERS => {
                if h.stream == 0 {
                    return Err(protocol("HEADERS on stream 0"));
                }
                let mut fragment = unpad(h.flags, payload)?;
                if h.flags & PRIORITY_FLAG != 0 {
                    fragment = fragment
                        .get(5..)
                        .ok_or_else(|| protocol("HEADERS priority too short"))?;
                }
                let mut bytes = HeldBytes::new(Rc::clone(&self.shared));
                bytes
                    .try_extend(fragment, MAX_HEADER_BLOCK)
                    .map_err(H2Error::Over)?;
                let block = Block {
                    stream: h.stream,
                    end_stream: h.flags & END_STREAM != 0,
                    bytes,
                };
                if h.flags & END_HEADERS != 0 {
                    self.on_headers(block, events)
                } else {
                    self.block = Some(block);
                    Ok(())
                }
            }
            CONTINUATION => {
                let Some(mut block) = self.block.take() else {
                    return Err(protocol("CONTINUATION without HEADERS"));
                };
                match block.bytes.try_extend(payload, MAX_HEADER_BLOCK) {
                    Ok(()) => {}
                    Err(OverLimit::Connection) => return Err(protocol("header block too large")),
                    Err(over) => return Err(H2Error::Over(over)),
                }
                if h.flags & END_HEADERS != 0 {
                    self.on_headers(block, events)
                } else {
                    self.block = Some(block);
                    Ok(())
                }
            }
            PRIORITY => Ok(()),
            RST_STREAM => {
                let code = be32(payload)
                    .filter(|_| payload.len() == 4 && h.stream != 0)
                    .ok_or_else(|| protocol("bad RST_STREAM"))?;
                if self.streams.remove(&h.stream).is_some() {
                    events.push(Event::Reset {
                        stream: h.stream,
                        code,
                    });
                }
                Ok(())
            }
            SETTINGS => self.on_settings(h, payload),
            PUSH_PROMISE => Err(protocol("PUSH_PROMISE although push is disabled")),
            PING => {
                if payload.len() != 8 || h.stream != 0 {
                    return Err(protocol("bad PING"));
                }
                if h.flags & ACK == 0 {
                    let ack = frame(PING, ACK, 0, payload);
                    self.emit(&ack)?;
                }
                Ok(())
            }
            GOAWAY => {
                let (Some(last), Some(code)) = (be32(payload), payload.get(4..).and_then(be32))
                else {
                    return Err(protocol("bad GOAWAY"));
                };
                let last = last & MAX_STREAM_ID;
                // A later GOAWAY may only lower the last stream id.
                let last = self.goaway.map_or(last, |l| l.min(last));
                self.goaway = Some(last);
                let refused: Vec<u32> = self
                    .streams
                    .range(last.saturating_add(1)..)
                    .map(|(id, _)| *id)
                    .collect();
                for stream in refused {
                    self.streams.remove(&stream);
                    events.push(Event::Reset {
                        stream,
                        code: REFUSED_STREAM,
                    });
                }
                events.push(Event::GoAway {
                    last_stream: last,
                    code,
                });
                Ok(())
            }
            WINDOW_UPDATE => {
                let increment = be32(payload)
                    .filter(|_| payload.len() == 4)
                    .ok_or_else(|| protocol("bad WINDOW_UPDATE"))?
                    & MAX_STREAM_ID;
                let increment = i64::from(increment);
                if h.stream == 0 {
                    if increment == 0 {
                        return Err(protocol("WINDOW_UPDATE of 0 on the connection"));
                    }
                    self.send_window = self.send_window.saturating_add(increment);
                    if self.send_window > MAX_WINDOW {
                        return Err(protocol("connection window overflow"));
                    }
                } else if let Some(stream) = self.streams.get_mut(&h.stream) {
                    stream.send_window = stream.send_window.saturating_add(increment);
                    if stream.send_window > MAX_WINDOW {
                        return Err(protocol("stream window overflow"));
                    }
                }
                self.flush_pending()
            }
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, h: Head, payload: &[u8]) -> Result<(), H2Error> {
        if h.stream != 0 {
            return Err(protocol("SETTINGS on a stream"));
        }
        if h.flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(protocol("SETTINGS ACK with a payload"));
            }
            if !self.acked {
                self.acked = true;
                // From now on HCM's encoder may keep no dynamic table.
                self.decoder.set_allowed(0);
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(protocol("SETTINGS length not a multiple of 6"));
        }
        for entry in payload.chunks(6) {
            let id =
                u16::from_be_bytes([*entry.first().unwrap_or(&0), *entry.get(1).unwrap_or(&0)]);
            let value = be32(entry.get(2..).unwrap_or(&[])).unwrap_or(0);
            match id {
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(protocol("initial window too large"));
                    }
                    let delta = value.saturating_sub(self.peer_initial_window);
                    self.peer_initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.send_window = stream.send_window.saturating_add(delta);
                        if stream.send_window > MAX_WINDOW {
                            return Err(protocol("stream window overflow"));
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(protocol("bad SETTINGS_MAX_FRAME_SIZE"));
                    }
                    self.peer_max_frame = usize::try_from(value).unwrap_or(DEFAULT_MAX_FRAME);
                }
                SETTINGS_MAX_CONCURRENT_STREAMS => self.peer_max_streams = value,
                // Our encoder keeps no table; push is never used by a server toward us.
                _ => {}
            }
        }
        let ack = frame(SETTINGS, ACK, 0, &[]);
        self.emit(&ack)?;
        self.flush_pending()
    }

    fn on_data(&mut self, h: Head, payload: &[u8], events: &mut Vec<Event>) -> Result<(), H2Error> {
        if h.stream == 0 {
            return Err(protocol("DATA on stream 0"));
        }
        let data = unpad(h.flags, payload)?;
        // Flow control counts the whole payload, padding included.
        let n = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.conn_unacked = self.conn_unacked.saturating_add(n);
        if self.conn_unacked >= self.settings.connection_window / 2 {
            let wu = frame(WINDOW_UPDATE, 0, 0, &self.conn_unacked.to_be_bytes());
            self.conn_unacked = 0;
            self.emit(&wu)?;
        }
        let max_body = self.settings.max_body;
        let half = self.settings.stream_window / 2;
        let Some(stream) = self.streams.get_mut(&h.stream) else {
            // A stream we reset or that GOAWAY refused: its bytes only count for the connection.
            return Ok(());
        };
        if stream.head.is_none() {
            return Err(protocol("DATA before HEADERS"));
        }
        stream
            .body
            .try_extend(data, max_body)
            .map_err(H2Error::Over)?;
        let end = h.flags & END_STREAM != 0;
        stream.unacked = stream.unacked.saturating_add(n);
        let update = (!end && stream.unacked >= half).then(|| {
            let wu = frame(WINDOW_UPDATE, 0, h.stream, &stream.unacked.to_be_bytes());
            stream.unacked = 0;
            wu
        });
        if let Some(wu) = update {
            self.emit(&wu)?;
        }
        if end {
            self.finish(h.stream, events);
        }
        Ok(())
    }

    fn on_headers(&mut self, block: Block, events: &mut Vec<Event>) -> Result<(), H2Error> {
        // Decoded even for streams we no longer track: the dynamic table must stay in step.
        let fields = self
            .decoder
            .decode(block.bytes.as_slice(), MAX_HEADER_LIST)
            .map_err(|e| protocol(e.to_string()))?;
        let Some(stream) = self.streams.get_mut(&block.stream) else {
            return Ok(());
        };
        if stream.head.is_none() {
            let status = fields
                .iter()
                .find(|(n, _)| n == ":status")
                .and_then(|(_, v)| v.parse::<u16>().ok())
                .ok_or_else(|| protocol("answer without :status"))?;
            if (100..200).contains(&status) {
                // Informational: the real answer follows.
                return Ok(());
            }
            let headers = fields
                .into_iter()
                .filter(|(n, _)| !n.starts_with(':'))
                .collect();
            stream.head = Some((status, headers));
        }
        // A second block is trailers: nothing in the bridge uses them.
        if block.end_stream {
            self.finish(block.stream, events);
        }
        Ok(())
    }

    fn finish(&mut self, id: u32, events: &mut Vec<Event>) {
        let Some(mut stream) = self.streams.remove(&id) else {
            return;
        };
        let (status, headers) = stream.head.take().unwrap_or((0, Vec::new()));
        events.push(Event::Answer {
            stream: id,
            status,
            headers,
            body: stream.body.as_slice().to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames in `bytes` (after the preface, if it starts with it).
    fn frames(bytes: &[u8]) -> Vec<(Head, Vec<u8>)> {
        let mut rest = bytes.strip_prefix(PREFACE).unwrap_or(bytes);
        let mut out = Vec::new();
        while let Some(h) = parse_head(rest) {
            let end = HEAD_LEN + h.len;
            out.push((h, rest[HEAD_LEN..end].to_vec()));
            rest = &rest[end..];
        }
        assert!(rest.is_empty(), "a partial frame");
        out
    }

    fn settings() -> Settings {
        Settings {
            stream_window: 1 << 20,
            connection_window: 16 << 20,
            max_body: 1 << 20,
            max_pending_body: 4 << 20,
        }
    }

    fn client() -> Client {
        let mut c = Client::new(VmShared::unbounded(), settings());
        let mut first = Vec::new();
        c.take_output(&mut first);
        assert!(first.starts_with(PREFACE));
        let f = frames(&first);
        assert_eq!(f[0].0.kind, SETTINGS);
        assert_eq!((f[1].0.kind, f[1].0.stream), (WINDOW_UPDATE, 0));
        c
    }

    /// HCM's answer on `stream`: HEADERS (`:status` indexed or literal) then DATA, END_STREAM.
    fn answer(stream: u32, status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        hpack::encode_literal(&mut block, 8, ":status", status);
        for (n, v) in headers {
            hpack::encode_literal(&mut block, 0, n, v);
        }
        let mut out = frame(HEADERS, END_HEADERS, stream, &block);
        out.extend(frame(DATA, END_STREAM, stream, body));
        out
    }

    #[test]
    fn a_request_is_headers_then_data_and_its_answer_an_event() {
        let mut c = client();
        let id = c
            .open("svc", "/svc/m", [("x-meltemi-rid", "7")], b"frame")
            .unwrap();
        assert_eq!(id, 1);
        let mut out = Vec::new();
        c.take_output(&mut out);
        let f = frames(&out);
        assert_eq!(
            (f[0].0.kind, f[0].0.flags, f[0].0.stream),
            (HEADERS, END_HEADERS, 1)
        );
        let fields = hpack::Decoder::new().decode(&f[0].1, 1 << 16).unwrap();
        let names: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "svc"),
                (":path", "/svc/m"),
                ("x-meltemi-rid", "7"),
                ("content-length", "5")
            ]
        );
        assert_eq!(
            (f[1].0.kind, f[1].0.flags, &f[1].1[..]),
            (DATA, END_STREAM, &b"frame"[..])
        );
        assert_eq!(c.open("svc", "/", [], b"").unwrap(), 3);
        // The answers, split at every byte, and out of order.
        let mut wire = answer(3, "404", &[], b"no route");
        wire.extend(answer(
            1,
            "200",
            &[("x-meltemi-response", "response")],
            b"answer",
        ));
        for cut in 0..wire.len() {
            let mut c2 = client();
            c2.open("svc", "/", [], b"x").unwrap();
            c2.open("svc", "/", [], b"").unwrap();
            let mut events = Vec::new();
            c2.receive(&wire[..cut], &mut events).unwrap();
            c2.receive(&wire[cut..], &mut events).unwrap();
            assert_eq!(events.len(), 2, "cut {cut}");
            assert_eq!(
                events[1],
                Event::Answer {
                    stream: 1,
                    status: 200,
                    headers: vec![("x-meltemi-response".into(), "response".into())],
                    body: b"answer".to_vec()
                }
            );
            assert!(matches!(
                &events[0],
                Event::Answer {
                    stream: 3,
                    status: 404,
                    ..
                }
            ));
            assert_eq!(c2.streams(), 0);
        }
    }

    #[test]
    fn settings_and_ping_are_acknowledged_and_windows_respected() {
        let mut c = client();
        let mut events = Vec::new();
        let mut s = Vec::new();
        s.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        s.extend_from_slice(&10u32.to_be_bytes());
        s.extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
        s.extend_from_slice(&2u32.to_be_bytes());
        let mut wire = frame(SETTINGS, 0, 0, &s);
        wire.extend(frame(PING, 0, 0, b"12345678"));
        c.receive(&wire, &mut events).unwrap();
        let mut out = Vec::new();
        c.take_output(&mut out);
        let f = frames(&out);
        assert_eq!((f[0].0.kind, f[0].0.flags), (SETTINGS, ACK));
        assert_eq!(
            (f[1].0.kind, f[1].0.flags, &f[1].1[..]),
            (PING, ACK, &b"12345678"[..])
        );
        // A 25-byte body with a 10-byte stream window: 10 now, the rest on WINDOW_UPDATE.
        c.open("svc", "/", [], &[7u8; 25]).unwrap();
        let mut out = Vec::new();
        c.take_output(&mut out);
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!((f[1].0.kind, f[1].1.len(), f[1].0.flags), (DATA, 10, 0));
        c.receive(
            &frame(WINDOW_UPDATE, 0, 1, &20u32.to_be_bytes()),
            &mut events,
        )
        .unwrap();
        let mut out = Vec::new();
        c.take_output(&mut out);
        let f = frames(&out);
        assert_eq!(
            (f[0].0.kind, f[0].1.len(), f[0].0.flags),
            (DATA, 15, END_STREAM)
        );
        // HCM's limit of 2 concurrent streams.
        assert!(c.can_open());
        c.open("svc", "/", [], b"").unwrap();
        assert!(!c.can_open());
        assert!(events.is_empty());
    }

    #[test]
    fn resets_and_goaway_fail_exactly_the_streams_concerned() {
        let mut c = client();
        for _ in 0..3 {
            c.open("svc", "/", [], b"").unwrap();
        }
        let mut events = Vec::new();
        let mut wire = frame(RST_STREAM, 0, 1, &REFUSED_STREAM.to_be_bytes());
        let mut goaway = 3u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&0u32.to_be_bytes());
        wire.extend(frame(GOAWAY, 0, 0, &goaway));
        wire.extend(answer(3, "200", &[], b"ok"));
        c.receive(&wire, &mut events).unwrap();
        assert_eq!(
            events[..3],
            [
                Event::Reset {
                    stream: 1,
                    code: REFUSED_STREAM
                },
                Event::Reset {
                    stream: 5,
                    code: REFUSED_STREAM
                },
                Event::GoAway {
                    last_stream: 3,
                    code: 0
                }
            ]
        );
        assert!(matches!(events[3], Event::Answer { stream: 3, .. }));
        assert!(!c.can_open());
        assert!(c.open("svc", "/", [], b"").is_err());
    }

    #[test]
    fn continuation_padding_and_trailers() {
        let mut c = client();
        c.open("svc", "/", [], b"").unwrap();
        let mut block = Vec::new();
        hpack::encode_indexed(&mut block, 8);
        hpack::encode_literal(&mut block, 0, "x-a", "b");
        let (a, b) = block.split_at(2);
        let mut padded = vec![3u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut wire = frame(HEADERS, PADDED, 1, &padded);
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        wire.extend(frame(DATA, PADDED, 1, b"\x02xy\0\0"));
        let mut trailers = Vec::new();
        hpack::encode_literal(&mut trailers, 0, "grpc-status", "0");
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
        let mut events = Vec::new();
        c.receive(&wire, &mut events).unwrap();
        assert_eq!(
            events,
            [Event::Answer {
                stream: 1,
                status: 200,
                headers: vec![("x-a".into(), "b".into())],
                body: b"xy".to_vec()
            }]
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        for wire in [
            frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]),
            frame(CONTINUATION, END_HEADERS, 1, &[]),
            frame(PING, 0, 0, b"short"),
            frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 0]),
            frame(DATA, 0, 1, b"before headers"),
            frame(DATA, PADDED, 1, &[9, 1]),
            frame(HEADERS, END_HEADERS, 1, &[0x80]),
            [head_bytes(20_000, DATA, 0, 1), vec![0; 20_000]].concat(),
        ] {
            let mut c = client();
            c.open("svc", "/", [], b"").unwrap();
            let mut events = Vec::new();
            assert!(
                c.receive(&wire, &mut events).is_err(),
                "{:02x?}",
                &wire[..9]
            );
        }
    }

    fn head_bytes(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
        let mut out = Vec::new();
        head(&mut out, len, kind, flags, stream);
        out
    }

    #[test]
    fn received_data_is_acknowledged_with_window_updates() {
        let mut c = Client::new(
            VmShared::unbounded(),
            Settings {
                stream_window: 100,
                connection_window: 65_535,
                max_body: 1 << 20,
                max_pending_body: 1 << 20,
            },
        );
        c.open("svc", "/", [], b"").unwrap();
        let mut out = Vec::new();
        c.take_output(&mut out);
        let mut block = Vec::new();
        hpack::encode_indexed(&mut block, 8);
        let mut wire = frame(HEADERS, END_HEADERS, 1, &block);
        wire.extend(frame(DATA, 0, 1, &[1; 60]));
        let mut events = Vec::new();
        c.receive(&wire, &mut events).unwrap();
        let mut out = Vec::new();
        c.take_output(&mut out);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].0.kind, f[0].0.stream, &f[0].1[..]),
            (WINDOW_UPDATE, 1, &60u32.to_be_bytes()[..])
        );
        assert!(events.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_from_hcm_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 1..6)) {
            let mut c = client();
            let _ = c.open("svc", "/", [], b"x");
            let mut events = Vec::new();
            for chunk in chunks {
                if c.receive(&chunk, &mut events).is_err() {
                    break;
                }
            }
        }
    }
}

//! Protocol-independent vocabulary: value types, message types, and the parsed message header.
//!
//! Binary and compact encode the same Thrift data model with different type codes; the skipper
//! and the codec work on these shared enums so they are written once.

use crate::cursor::{malformed, Res};

/// The Thrift value types the skipper understands (Thrift IDL types, not wire codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TType {
    Bool,
    Byte,
    I16,
    I32,
    I64,
    Double,
    /// `string` and `binary`: a length-prefixed byte run.
    Binary,
    Struct,
    Map,
    Set,
    List,
    /// 16 raw bytes (Thrift 0.19+).
    Uuid,
}

/// The serialization protocol of a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TBinaryProtocol; `strict` is true for the versioned (0x8001) message header and false
    /// for the old header that starts with the name length.
    Binary { strict: bool },
    /// TCompactProtocol.
    Compact,
}

impl Protocol {
    /// The THeader protocol id (0 binary, 2 compact).
    pub(crate) fn header_id(self) -> u32 {
        match self {
            Protocol::Binary { .. } => 0,
            Protocol::Compact => 2,
        }
    }

    /// Same family (binary or compact), ignoring binary strictness.
    pub(crate) fn same_family(self, other: Protocol) -> bool {
        matches!(
            (self, other),
            (Protocol::Binary { .. }, Protocol::Binary { .. })
                | (Protocol::Compact, Protocol::Compact)
        )
    }
}

/// TMessageType, with the wire values every protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageType {
    Call = 1,
    Reply = 2,
    Exception = 3,
    Oneway = 4,
}

impl MessageType {
    /// Parse the wire value; anything else is corrupt.
    pub(crate) fn from_wire(v: u8) -> Res<Self> {
        Ok(match v {
            1 => Self::Call,
            2 => Self::Reply,
            3 => Self::Exception,
            4 => Self::Oneway,
            _ => return malformed(format!("invalid thrift message type {v}")),
        })
    }

    /// The `message_type` metadata value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Reply => "reply",
            Self::Exception => "exception",
            Self::Oneway => "oneway",
        }
    }
}

/// A decoded message header (`writeMessageBegin`), borrowing the name from the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageHead<'a> {
    pub name: &'a [u8],
    pub mtype: MessageType,
    pub seqid: i32,
    pub protocol: Protocol,
}

/// Method names are identifiers; a longer "name" is a corrupt or hostile length, and rejecting
/// it early keeps an unframed stream from waiting for megabytes that will never form a message.
pub(crate) const MAX_NAME_LEN: usize = 64 * 1024;

//! Dubbo message bodies (Hessian2 serialization): what a request invocation and a response
//! result look like, parsed just far enough for routing metadata and attachment rewriting.
//!
//! Request body (`DubboCodec.encodeRequestData` in Java):
//! dubbo version, service path, service version, method name, parameter-types descriptor
//! (JVM descriptors such as `Ljava/lang/String;[IJ`), one value per parameter, attachments map.
//!
//! Response body with status 20 (`DubboCodec.encodeResponseData`): a result flag int, then
//! 0 exception, 1 value, 2 nothing, 3 exception + attachments, 4 value + attachments,
//! 5 attachments. With another status the body is a single string, the error message.

use std::ops::Range;

use meltemi_sdk::Metadata;

use crate::hessian::{HessianError, Reader};

/// One attachment entry as found in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The key; `None` for the (never seen in practice) non-string keys, which are kept in the
    /// body but cannot be matched or exposed.
    pub key: Option<String>,
    /// The value as text when it is a scalar (string, int, long, boolean).
    pub value: Option<String>,
    /// Where the value's bytes are in the body.
    pub value_span: Range<usize>,
    /// True when the value holds no list, map, object or class definition, so replacing it
    /// cannot renumber Hessian back-references or class definitions used later in the map.
    pub replaceable: bool,
}

/// The attachments map of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachments {
    /// The map's bytes (map tag to closing `'Z'` inclusive). Empty (at the end of the body)
    /// when the body has no map, one byte when it holds a null instead of a map.
    pub span: Range<usize>,
    /// Offset of the closing `'Z'`; `None` when there is no map to extend.
    pub close: Option<usize>,
    /// Entries in body order.
    pub entries: Vec<Attachment>,
}

impl Attachments {
    /// The value of the first entry with `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|a| a.key.as_deref() == Some(key))
            .and_then(|a| a.value.as_deref())
    }

    fn none_at(pos: usize) -> Self {
        Self {
            span: pos..pos,
            close: None,
            entries: Vec::new(),
        }
    }

    /// Appends every scalar entry to `md`, skipping keys `md` already has (the well-known keys
    /// come first and win).
    pub fn push_into(&self, md: &mut Metadata) {
        for a in &self.entries {
            if let (Some(k), Some(v)) = (&a.key, &a.value) {
                if md.get(k).is_none() {
                    md.push(k.as_str(), v.as_str());
                }
            }
        }
    }
}

/// Reads an attachments map at the reader's position (or notes that there is none, where the
/// map is `optional`).
fn read_attachments(r: &mut Reader<'_>, optional: bool) -> Result<Attachments, HessianError> {
    let start = r.pos();
    if optional && r.at_end() {
        // Some old clients stop after the arguments; a mutation can still append a map.
        return Ok(Attachments::none_at(start));
    }
    if r.peek()? == b'N' {
        r.skip_value()?;
        return Ok(Attachments {
            span: start..r.pos(),
            close: None,
            entries: Vec::new(),
        });
    }
    r.begin_map()?;
    let mut entries = Vec::new();
    loop {
        let close = r.pos();
        if r.end_of_map()? {
            return Ok(Attachments {
                span: start..r.pos(),
                close: Some(close),
                entries,
            });
        }
        let key = if r.next_is_string() {
            r.read_string()?
        } else {
            r.skip_value().map(|()| None)?
        };
        let (refs, classes) = (r.ref_count(), r.class_count());
        let value_start = r.pos();
        let value = r.read_scalar()?;
        entries.push(Attachment {
            key,
            value,
            value_span: value_start..r.pos(),
            replaceable: r.ref_count() == refs && r.class_count() == classes,
        });
    }
}

/// Number of parameters in a JVM method descriptor's parameter list (`Ljava/lang/String;[IJ`
/// is three). Dots are accepted in class names too (some clients write them).
pub fn count_parameters(desc: &str) -> Result<usize, String> {
    let mut rest = desc.as_bytes();
    let mut n: usize = 0;
    while !rest.is_empty() {
        let dims = rest.iter().take_while(|&&c| c == b'[').count();
        rest = rest.get(dims..).unwrap_or_default();
        let (first, after) = rest
            .split_first()
            .ok_or_else(|| format!("parameter types {desc:?}: '[' without element type"))?;
        rest = match first {
            b'V' | b'Z' | b'B' | b'C' | b'D' | b'F' | b'I' | b'J' | b'S' => after,
            b'L' => match after.iter().position(|&c| c == b';') {
                // `semi` bytes of class name, then the ';'.
                Some(semi) if semi > 0 => after
                    .get(semi..)
                    .and_then(|r| r.get(1..))
                    .unwrap_or_default(),
                _ => return Err(format!("parameter types {desc:?}: class name without ';'")),
            },
            &c => {
                let at = desc.len().saturating_sub(rest.len());
                return Err(format!(
                    "parameter types {desc:?}: invalid descriptor character {:?} at {at}",
                    char::from(c)
                ));
            }
        };
        // At most one parameter per byte of `desc`: cannot saturate.
        n = n.saturating_add(1);
    }
    Ok(n)
}

/// The parts of a request body the codec uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Dubbo protocol version the client speaks (e.g. `2.0.2`).
    pub dubbo: String,
    /// Service path (usually the interface name).
    pub path: String,
    /// Service version field (may be empty or `0.0.0`).
    pub version: String,
    /// Method name.
    pub method: String,
    /// Parameter-types descriptor.
    pub param_types: String,
    /// Number of arguments skipped.
    pub arg_count: usize,
    /// The attachments.
    pub attachments: Attachments,
}

/// Parses a (non-event) request body.
pub fn parse_invocation(body: &[u8]) -> Result<Invocation, String> {
    let mut r = Reader::new(body);
    let ctx = |what: &'static str| move |e: HessianError| format!("request {what}: {e}");
    let dubbo = r.read_str().map_err(ctx("dubbo version"))?;
    let path = r.read_str().map_err(ctx("service path"))?;
    let version = r.read_str().map_err(ctx("service version"))?;
    let method = r.read_str().map_err(ctx("method name"))?;
    // dubbox-era clients (dubbo2.js `isSupportedDubbox`) insert an int before the types.
    if r.next_is_int() {
        r.read_int().map_err(ctx("dubbox marker"))?;
    }
    let param_types = r.read_str().map_err(ctx("parameter types"))?;
    let arg_count = count_parameters(&param_types)?;
    for i in 0..arg_count {
        r.skip_value()
            .map_err(|e| format!("request argument {i} of {method}({param_types}): {e}"))?;
    }
    let attachments = read_attachments(&mut r, true).map_err(ctx("attachments"))?;
    Ok(Invocation {
        dubbo,
        path,
        version,
        method,
        param_types,
        arg_count,
        attachments,
    })
}

impl Invocation {
    /// Routing metadata: well-known keys first, then every other attachment verbatim.
    pub fn metadata(&self) -> Metadata {
        let a = &self.attachments;
        let non_empty = |s: Option<&str>| s.filter(|v| !v.is_empty()).map(str::to_owned);
        let interface = non_empty(a.get("interface")).unwrap_or_else(|| self.path.clone());
        let mut md = Metadata::new();
        md.push("service", interface.as_str());
        md.push("interface", interface);
        md.push("method", self.method.as_str());
        if let Some(v) = non_empty(a.get("version")).or_else(|| non_empty(Some(&self.version))) {
            md.push("version", v);
        }
        if let Some(g) = non_empty(a.get("group")) {
            md.push("group", g);
        }
        md.push("path", self.path.as_str());
        if let Some(t) = non_empty(a.get("timeout")) {
            md.push("timeout", t);
        }
        md.push("dubbo", self.dubbo.as_str());
        a.push_into(&mut md);
        md
    }
}

/// Result flags of an OK response body.
pub mod result {
    /// The value is an exception.
    pub const EXCEPTION: i32 = 0;
    /// A value follows.
    pub const VALUE: i32 = 1;
    /// The method returned null.
    pub const NULL_VALUE: i32 = 2;
    /// Exception, then attachments (Dubbo 2.0.2+ peers).
    pub const EXCEPTION_WITH_ATTACHMENTS: i32 = 3;
    /// Value, then attachments.
    pub const VALUE_WITH_ATTACHMENTS: i32 = 4;
    /// Null, then attachments.
    pub const NULL_VALUE_WITH_ATTACHMENTS: i32 = 5;
}

/// The parts of an OK response body the codec uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultBody {
    /// The result flag; `None` for a body that is a bare null (dubbo-remoting, the node
    /// provider behind sofa-rpc-node, writes that for methods returning nothing).
    pub flag: Option<i32>,
    /// The attachments, for flags 3/4/5.
    pub attachments: Option<Attachments>,
}

impl ResultBody {
    /// True when the result is an exception.
    pub fn is_exception(&self) -> bool {
        matches!(
            self.flag,
            Some(result::EXCEPTION | result::EXCEPTION_WITH_ATTACHMENTS)
        )
    }
}

/// Parses the body of a status-20, non-event response.
pub fn parse_result(body: &[u8]) -> Result<ResultBody, String> {
    let mut r = Reader::new(body);
    let ctx = |what: &'static str| move |e: HessianError| format!("response {what}: {e}");
    if r.peek().map_err(ctx("result flag"))? == b'N' {
        return Ok(ResultBody {
            flag: None,
            attachments: None,
        });
    }
    let flag = r.read_int().map_err(ctx("result flag"))?;
    let attachments = match flag {
        result::EXCEPTION | result::VALUE | result::NULL_VALUE => None,
        result::EXCEPTION_WITH_ATTACHMENTS | result::VALUE_WITH_ATTACHMENTS => {
            r.skip_value().map_err(ctx("value"))?;
            Some(read_attachments(&mut r, false).map_err(ctx("attachments"))?)
        }
        result::NULL_VALUE_WITH_ATTACHMENTS => {
            Some(read_attachments(&mut r, false).map_err(ctx("attachments"))?)
        }
        other => {
            return Err(format!(
                "unknown dubbo result flag {other}, expected 0 to 5"
            ))
        }
    };
    Ok(ResultBody {
        flag: Some(flag),
        attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parameters_like_the_jvm() {
        // Cases from Envoy's dubbo_proxy HessianUtils tests (their error case returns 0; we
        // refuse it instead, since skipping zero arguments would misread the body).
        assert_eq!(count_parameters(""), Ok(0));
        assert_eq!(count_parameters("VZ[BBCDFIJS"), Ok(10));
        assert_eq!(count_parameters("[V[Z[B[C[D[F[I[J[S"), Ok(9));
        assert_eq!(
            count_parameters("Ljava.lang.String;[BCDLjava.lang.Date;CDFIJ"),
            Ok(10)
        );
        assert_eq!(
            count_parameters("CD[B[Ljava.lang.String;[Ljava.lang.Date;DLjava.lang.String;FIJ"),
            Ok(10)
        );
        assert_eq!(count_parameters("Ljava/lang/String;[[IJ"), Ok(3));
        assert!(count_parameters("abcdefg").is_err());
        assert!(count_parameters("Ljava/lang/String").is_err());
        assert!(count_parameters("[").is_err());
        assert!(count_parameters("L;").is_err());
    }
}

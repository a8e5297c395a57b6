//! Fuzzes the Dubbo codec: decoding a stream of arbitrary bytes, re-encoding every decoded
//! frame with a mutation, and decoding the codec's own output again. Nothing may panic; what
//! the codec writes must decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::{Codec, ErrorKind, Metadata};

fuzz_target!(|data: &[u8]| {
    let mut codec = DubboCodec::new(&DubboConfig::default());
    let mutation: Metadata = [("x-meltemi", "fuzz"), ("version", "2.0.0")]
        .into_iter()
        .collect();
    let mut rest = data;
    while let Ok(Some(m)) = codec.decode(rest) {
        assert!(m.len >= 16 && m.len <= rest.len());
        let frame = &rest[..m.len];
        let mut out = Vec::new();
        if codec.encode(frame, &m, &mutation, &mut out).is_ok() {
            let again = codec
                .decode(&out)
                .expect("encoded frame decodes")
                .expect("complete");
            assert_eq!(again.len, out.len());
            assert_eq!(again.kind, m.kind);
        }
        if m.kind.is_request() {
            for kind in ErrorKind::ALL {
                let reply = codec
                    .error_reply(&m, kind, "fuzz")
                    .expect("dubbo has error replies");
                assert!(codec.decode(&reply).expect("reply decodes").is_some());
            }
        }
        rest = &rest[m.len..];
    }
});

//! Property tests: round trips through the test-only writer, every buffering of a frame, and
//! arbitrary bytes (which must never panic).

mod support;

use std::collections::BTreeMap;

use meltemi_dubbo::body::parse_invocation;
use meltemi_dubbo::hessian::Reader;
use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::{Codec, MessageKind, Metadata};
use proptest::prelude::*;
use support::*;

fn codec() -> DubboCodec {
    DubboCodec::new(&DubboConfig::default())
}

fn text() -> impl Strategy<Value = String> {
    // ASCII, 2-byte, 3-byte and supplementary (surrogate pair) characters.
    "[a-zA-Z0-9 ._é中\u{1F600}-\u{1F602}]{0,40}"
}

fn leaf() -> impl Strategy<Value = V> {
    prop_oneof![
        Just(V::Null),
        any::<bool>().prop_map(V::Bool),
        any::<i32>().prop_map(V::Int),
        prop_oneof![any::<i64>(), -300_000i64..300_000].prop_map(V::Long),
        prop_oneof![
            any::<f64>(),
            (-40_000i32..40_000).prop_map(f64::from),
            Just(0.0),
            Just(1.0),
            Just(0.5)
        ]
        .prop_map(V::Double),
        any::<i64>().prop_map(V::DateMillis),
        any::<i32>().prop_map(V::DateMinutes),
        (text(), 1usize..12).prop_map(|(s, c)| V::Str(s, c)),
        (proptest::collection::vec(any::<u8>(), 0..80), 1usize..40).prop_map(|(b, c)| V::Bin(b, c)),
    ]
}

fn value() -> impl Strategy<Value = V> {
    leaf().prop_recursive(4, 40, 10, |inner| {
        prop_oneof![
            (
                proptest::option::of("\\[?[a-z.]{1,12}"),
                any::<bool>(),
                proptest::collection::vec(inner.clone(), 0..10)
            )
                .prop_map(|(ty, fixed, items)| V::List { ty, fixed, items }),
            (
                proptest::option::of("[a-z.]{1,12}"),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..5)
            )
                .prop_map(|(ty, entries)| V::Map { ty, entries }),
            (
                prop_oneof![
                    Just("org.meltemi.demo.User"),
                    Just("a.B"),
                    Just("java.math.BigDecimal")
                ],
                proptest::collection::vec(("[a-z]{1,6}", inner), 0..4)
            )
                .prop_map(|(c, fields)| V::Obj {
                    class: c.to_string(),
                    fields
                }),
            (0u32..5).prop_map(V::Ref),
        ]
    })
}

fn attachments() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("k-[a-z]{1,8}", text(), 0..8)
}

/// A request frame with random arguments and string attachments.
fn request() -> impl Strategy<Value = (Vec<u8>, u64, bool, usize, BTreeMap<String, String>)> {
    (
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(value(), 0..5),
        attachments(),
    )
        .prop_map(|(id, two_way, args, att)| {
            let desc = "Ljava/lang/Object;".repeat(args.len());
            let pairs: Vec<(String, V)> = att
                .iter()
                .map(|(k, v)| (k.clone(), V::Str(v.clone(), 7)))
                .collect();
            let body = request_body(
                "org.meltemi.demo.EchoService",
                "call",
                &desc,
                &args,
                Some(&pairs),
            );
            let f = frame(if two_way { REQ_TWOWAY } else { REQ_ONEWAY }, 0, id, &body);
            (f, id, two_way, args.len(), att)
        })
}

fn k_entries(md: &Metadata) -> Vec<(String, String)> {
    md.iter()
        .filter(|(k, _)| k.starts_with("k-"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn skipper_consumes_exactly_one_value(v in value()) {
        let mut w = W::default();
        w.value(&v);
        let len = w.out.len();
        w.out.push(0x90); // a following value that must stay unread
        let mut r = Reader::new(&w.out);
        prop_assert_eq!(r.skip_value().map_err(|e| e.0), Ok(()));
        prop_assert_eq!(r.pos(), len);
    }

    #[test]
    fn strings_round_trip(s in text(), chunk in 1usize..20) {
        let mut w = W::default();
        w.string(&s, chunk);
        let mut r = Reader::new(&w.out);
        prop_assert_eq!(r.read_string().map_err(|e| e.0), Ok(Some(s)));
        prop_assert!(r.at_end());
    }

    #[test]
    fn requests_round_trip((f, id, two_way, _n, att) in request()) {
        let m = codec().decode(&f).unwrap().unwrap();
        prop_assert_eq!(m.len, f.len());
        prop_assert_eq!(m.request_id, id);
        prop_assert_eq!(m.kind, if two_way { MessageKind::Request } else { MessageKind::OneWay });
        prop_assert_eq!(m.metadata.get("service"), Some("org.meltemi.demo.EchoService"));
        prop_assert_eq!(m.metadata.get("method"), Some("call"));
        let want: Vec<_> = att.into_iter().collect();
        prop_assert_eq!(k_entries(&m.metadata), want);
    }

    #[test]
    fn every_prefix_needs_more((f, ..) in request()) {
        let mut c = codec();
        for cut in 0..f.len() {
            prop_assert_eq!(c.decode(&f[..cut]), Ok(None));
        }
        // And a frame followed by the start of the next is still exactly one frame.
        let mut two = f.clone();
        two.extend_from_slice(&f[..f.len() / 2]);
        prop_assert_eq!(c.decode(&two).unwrap().unwrap().len, f.len());
    }

    #[test]
    fn mutation_round_trips(
        (f, _id, _tw, _n, att) in request(),
        muts in proptest::collection::vec(("k-[a-e]{1,2}", text()), 1..6),
    ) {
        let m = codec().decode(&f).unwrap().unwrap();
        let mutation: Metadata = muts.iter().cloned().collect();
        let mut out = Vec::new();
        codec().encode(&f, &m, &mutation, &mut out).unwrap();
        let got = codec().decode(&out).unwrap().unwrap();
        prop_assert_eq!(got.len, out.len());
        prop_assert_eq!(got.kind, m.kind);
        let mut want: Metadata = att.into_iter().collect();
        for (k, v) in mutation.iter() {
            want.set(k, v);
        }
        let want: Vec<_> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        prop_assert_eq!(k_entries(&got.metadata), want);
        // Arguments are untouched: the bytes before the attachments map are identical.
        let map_at = 16 + parse_invocation(&f[16..]).unwrap().attachments.span.start;
        prop_assert_eq!(&out[16..map_at], &f[16..map_at]);
    }

    #[test]
    fn responses_with_attachments(flag in 3u8..=5, v in value(), att in attachments()) {
        let mut w = W::default();
        w.int(i32::from(flag));
        if flag != 5 {
            w.value(&v);
        }
        w.out.push(b'H');
        for (k, val) in &att {
            w.str(k);
            w.str(val);
        }
        w.out.push(b'Z');
        let f = frame(RESPONSE, 20, 3, &w.out);
        let m = codec().decode(&f).unwrap().unwrap();
        prop_assert_eq!(m.kind, if flag == 3 { MessageKind::Exception } else { MessageKind::Response });
        let want: Vec<_> = att.into_iter().collect();
        prop_assert_eq!(k_entries(&m.metadata), want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut c = codec();
        let _ = c.decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        flags in prop_oneof![Just(0xc2u8), Just(0x82), Just(0x02), Just(0x22), Just(0xe2)],
        status in prop_oneof![Just(20u8), any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let f = frame(flags, status, 1, &body);
        let mut c = codec();
        if let Ok(Some(m)) = c.decode(&f) {
            prop_assert_eq!(m.len, f.len());
            let mutation: Metadata = [("k", "v")].into_iter().collect();
            let mut out = Vec::new();
            if c.encode(&f, &m, &mutation, &mut out).is_ok() {
                prop_assert!(c.decode(&out).unwrap().is_some());
            }
        }
    }

    #[test]
    fn corrupted_real_frames_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = vector("java-to-java.c2s.bin");
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let mut c = codec();
        let mut rest = &bytes[..];
        while let Ok(Some(m)) = c.decode(rest) {
            rest = &rest[m.len..];
        }
    }
}

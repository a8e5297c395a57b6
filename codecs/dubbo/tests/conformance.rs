//! The SDK's conformance kit on every captured Dubbo consumer stream (dubbo2js, sofa-rpc-node,
//! dubbo-ssl-python, Java): splits, pipelining, replies for every error kind, heartbeats,
//! extreme length fields.

use std::path::Path;

use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::testing::conformance;

#[test]
fn every_captured_consumer_stream_passes_the_conformance_kit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".c2s.bin") {
            continue;
        }
        let stream = std::fs::read(&path).unwrap();
        let report = conformance::<DubboCodec>(&DubboConfig::default(), &stream)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!report.kinds.is_empty());
        assert!(report.error_replies > 0, "{}: {report:?}", path.display());
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} captured streams");
}

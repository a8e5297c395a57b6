//! The SDK's conformance kit on every captured Thrift client stream (Apache Thrift and
//! thriftpy2, every transport and protocol): splits, pipelining, replies for every error kind,
//! extreme length fields.

use std::path::Path;

use meltemi_sdk::testing::conformance;
use meltemi_sdk::MessageKind;
use meltemi_thrift::{Config, ThriftCodec};

#[test]
fn every_captured_client_stream_passes_the_conformance_kit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".req.bin") {
            continue;
        }
        let stream = std::fs::read(&path).unwrap();
        let report = conformance::<ThriftCodec>(&Config::default(), &stream)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(report.kinds.len(), 8, "{}", path.display());
        assert!(report.kinds.contains(&MessageKind::OneWay));
        assert!(
            report.error_replies >= 7 * 7,
            "{}: {report:?}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} captured streams");
}

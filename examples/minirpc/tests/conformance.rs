//! The SDK's conformance kit on a MiniRPC client stream: what every codec written from the
//! guide should run (splits, pipelining, replies for every error kind, heartbeats, extreme
//! length fields).

use meltemi_sdk::testing::conformance;
use meltemi_sdk::{MessageKind, Metadata};
use minirpc::{frame, kind, MiniRpc, MiniRpcConfig};

#[test]
fn a_client_stream_passes_the_conformance_kit() {
    let md = |method: &str| -> Metadata {
        [("service", "demo"), ("method", method)]
            .into_iter()
            .collect()
    };
    let mut stream = Vec::new();
    frame::write(&mut stream, kind::REQUEST, 1, &md("sayHello"), b"hi").unwrap();
    frame::write(&mut stream, kind::ONEWAY, 2, &md("notify"), b"fire").unwrap();
    frame::write(&mut stream, kind::PING, 3, &Metadata::new(), b"").unwrap();
    frame::write(&mut stream, kind::REQUEST, 4, &md("echo"), &[7u8; 300]).unwrap();
    let report = conformance::<MiniRpc>(&MiniRpcConfig::default(), &stream).unwrap();
    assert_eq!(
        report.kinds,
        [
            MessageKind::Request,
            MessageKind::OneWay,
            MessageKind::Heartbeat,
            MessageKind::Request
        ]
    );
    assert!(report.error_replies >= 2 * 8, "{report:?}");
    assert!(report.extreme_cases > 1000, "{report:?}");
}

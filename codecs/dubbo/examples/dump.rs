//! Prints every frame of captured streams: `cargo run -p meltemi-dubbo --example dump -- FILE...`.
use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::Codec;

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).expect("read");
        let mut codec = DubboCodec::new(&DubboConfig::default());
        let mut rest = &bytes[..];
        println!("== {path}");
        while !rest.is_empty() {
            match codec.decode(rest) {
                Ok(Some(m)) => {
                    let md: Vec<_> = m.metadata.iter().collect();
                    println!(
                        "  {} id={} len={} {:?}",
                        m.kind.as_str(),
                        m.request_id,
                        m.len,
                        md
                    );
                    rest = &rest[m.len..];
                }
                other => {
                    println!("  stop: {other:?}");
                    break;
                }
            }
        }
    }
}

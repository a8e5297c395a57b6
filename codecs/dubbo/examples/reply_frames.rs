//! Writes the codec's error reply for every framework error kind (request id 0, detail
//! "meltemi test: <kind>") to `DIR/<kind>.bin`, for the live check in
//! `tests/peers/dubbo/run_matrix.py` that real consumers raise an RPC error on them:
//! `cargo run -p meltemi-dubbo --example reply_frames -- DIR`.
use meltemi_dubbo::{DubboCodec, DubboConfig};
use meltemi_sdk::{Codec, ErrorKind, Message, MessageKind};

fn main() {
    let dir = std::env::args().nth(1).expect("usage: reply_frames DIR");
    let mut codec = DubboCodec::new(&DubboConfig::default());
    let request = Message::new(0, MessageKind::Request, 0);
    for kind in ErrorKind::ALL {
        let detail = format!("meltemi test: {}", kind.as_str());
        let frame = codec
            .error_reply(&request, kind, &detail)
            .expect("dubbo has error replies");
        std::fs::write(format!("{dir}/{}.bin", kind.as_str()), frame).expect("write");
    }
}

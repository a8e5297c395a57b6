//! `thrift-rs-server`: the Echo service of `tests/peers/thrift/echo.thrift` served by the Rust
//! `thrift` crate 0.17, a real third-party Thrift server for the end-to-end suites.
//!
//! It behaves like the Python peers (`tests/peers/thrift/peer_common.py`): `echo` answers
//! `<tag>:<msg>`, `add` sums, `blob` reverses, `fail("internal")` raises a
//! TApplicationException INTERNAL_ERROR and any other `fail` the declared `EchoError` (code 42),
//! `notify` (one-way) is remembered, `mirror` returns its argument, `ping` nothing, `inspect` the
//! tag and the one-way messages received so far joined by `|` (the crate has no THeader, so no
//! `h:` keys).
//!
//! ```text
//! thrift-rs-server --port N [--host 127.0.0.1] [--transport framed|buffered]
//!                  [--protocol binary|compact] [--tag TAG]
//! ```
//! Prints `thrift-rs-server listening on HOST:PORT` once it accepts connections.
//!
//! The accept loop is ours rather than the crate's `TServer`, only so that every accepted socket
//! gets `TCP_NODELAY` (the crate's server leaves Nagle on, which adds 40 ms to small answers on
//! loopback). Each connection is served exactly as `TServer` serves it: the generated processor
//! is called until it returns an error, then the connection is closed. That is the behaviour
//! under test: for a call to an unknown method the generated processor writes the
//! UNKNOWN_METHOD exception without skipping the call's arguments, so the next read fails and
//! the server closes the connection.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TOutputProtocol,
};
use thrift::server::TProcessor;
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport,
    TIoChannel, TTcpChannel,
};
use thrift::{ApplicationError, ApplicationErrorKind};

#[allow(dead_code, clippy::all)]
mod echo;

use echo::{EchoError, EchoSyncHandler, EchoSyncProcessor, Item};

/// Command line options.
#[derive(Debug, Clone)]
struct Options {
    host: String,
    port: u16,
    framed: bool,
    compact: bool,
    tag: String,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        host: "127.0.0.1".into(),
        port: 0,
        framed: true,
        compact: false,
        tag: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => o.host = value()?,
            "--port" => o.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--transport" => {
                o.framed = match value()?.as_str() {
                    "framed" => true,
                    "buffered" => false,
                    other => return Err(format!("--transport {other}: framed or buffered")),
                }
            }
            "--protocol" => {
                o.compact = match value()?.as_str() {
                    "compact" => true,
                    "binary" => false,
                    other => return Err(format!("--protocol {other}: binary or compact")),
                }
            }
            "--tag" => o.tag = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.port == 0 {
        return Err("--port is required".into());
    }
    // Test peers never listen beyond loopback.
    if !matches!(o.host.as_str(), "127.0.0.1" | "localhost" | "::1") {
        return Err(format!("--host {}: loopback only", o.host));
    }
    Ok(o)
}

/// The service behaviour shared with the Python peers.
struct Handler {
    tag: String,
    notified: Mutex<Vec<String>>,
}

impl EchoSyncHandler for Handler {
    fn handle_echo(&self, msg: String) -> thrift::Result<String> {
        Ok(if self.tag.is_empty() {
            msg
        } else {
            format!("{}:{msg}", self.tag)
        })
    }

    fn handle_add(&self, a: i64, b: i64) -> thrift::Result<i64> {
        Ok(a.wrapping_add(b))
    }

    fn handle_blob(&self, mut data: Vec<u8>) -> thrift::Result<Vec<u8>> {
        data.reverse();
        Ok(data)
    }

    fn handle_fail(&self, why: String) -> thrift::Result<String> {
        if why == "internal" {
            return Err(thrift::Error::Application(ApplicationError::new(
                ApplicationErrorKind::InternalError,
                why,
            )));
        }
        // A user error of the declared type is written as the `err` result field.
        Err(thrift::Error::User(Box::new(EchoError::new(why, 42))))
    }

    fn handle_notify(&self, msg: String) -> thrift::Result<()> {
        self.notified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(msg);
        Ok(())
    }

    fn handle_mirror(&self, item: Item) -> thrift::Result<Item> {
        Ok(item)
    }

    fn handle_ping(&self) -> thrift::Result<()> {
        Ok(())
    }

    fn handle_inspect(&self) -> thrift::Result<BTreeMap<String, String>> {
        let notified = self
            .notified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .join("|");
        Ok(BTreeMap::from([
            ("tag".to_owned(), self.tag.clone()),
            ("notified".to_owned(), notified),
        ]))
    }
}

type Protocols = (
    Box<dyn TInputProtocol + Send>,
    Box<dyn TOutputProtocol + Send>,
);

/// The transport and protocol stack the options name, over one accepted socket.
fn protocols(o: &Options, stream: TcpStream) -> thrift::Result<Protocols> {
    let (r, w) = TTcpChannel::with_stream(stream).split()?;
    Ok(match (o.framed, o.compact) {
        (true, false) => (
            Box::new(TBinaryInputProtocol::new(
                TFramedReadTransport::new(r),
                true,
            )),
            Box::new(TBinaryOutputProtocol::new(
                TFramedWriteTransport::new(w),
                true,
            )),
        ),
        (true, true) => (
            Box::new(TCompactInputProtocol::new(TFramedReadTransport::new(r))),
            Box::new(TCompactOutputProtocol::new(TFramedWriteTransport::new(w))),
        ),
        (false, false) => (
            Box::new(TBinaryInputProtocol::new(
                TBufferedReadTransport::new(r),
                true,
            )),
            Box::new(TBinaryOutputProtocol::new(
                TBufferedWriteTransport::new(w),
                true,
            )),
        ),
        (false, true) => (
            Box::new(TCompactInputProtocol::new(TBufferedReadTransport::new(r))),
            Box::new(TCompactOutputProtocol::new(TBufferedWriteTransport::new(w))),
        ),
    })
}

/// Serves one connection the way the crate's `TServer` does: until the processor fails.
fn serve(processor: &EchoSyncProcessor<Handler>, o: &Options, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (mut i, mut out) = match protocols(o, stream) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("thrift-rs-server: {peer}: {e}");
            return;
        }
    };
    loop {
        if let Err(e) = processor.process(&mut *i, &mut *out) {
            // End of file is a client hanging up; anything else is worth a line in the log.
            let eof = matches!(&e, thrift::Error::Transport(t)
                if t.kind == thrift::TransportErrorKind::EndOfFile);
            if !eof {
                eprintln!("thrift-rs-server: {peer}: closing after: {e}");
            }
            return;
        }
    }
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("thrift-rs-server: {e}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind((o.host.as_str(), o.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("thrift-rs-server: bind {}:{}: {e}", o.host, o.port);
            std::process::exit(1);
        }
    };
    let processor = Arc::new(EchoSyncProcessor::new(Handler {
        tag: o.tag.clone(),
        notified: Mutex::new(Vec::new()),
    }));
    println!("thrift-rs-server listening on {}:{}", o.host, o.port);
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("thrift-rs-server: TCP_NODELAY: {e}");
        }
        let (processor, o) = (Arc::clone(&processor), o.clone());
        std::thread::spawn(move || serve(&processor, &o, stream));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    /// The committed `echo.rs` is what the installed compiler makes of `echo.thrift` today
    /// (skipped where no `thrift` compiler is installed, unless `MELTEMI_REQUIRE_PEERS=1`).
    #[test]
    fn generated_code_is_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out =
            std::env::temp_dir().join(format!("meltemi-thrift-rs-gen-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let idl = dir.join("../thrift/echo.thrift");
        let status = match Command::new("thrift")
            .args(["--gen", "rs", "-out"])
            .arg(&out)
            .arg(&idl)
            .status()
        {
            Ok(s) => s,
            Err(e) => {
                meltemi_e2e::workspace::peer_missing(
                    &format!("the thrift compiler ({e})"),
                    "run tests/peers/thrift/install.sh",
                );
                return;
            }
        };
        assert!(status.success(), "thrift --gen rs failed");
        let fresh = std::fs::read_to_string(out.join("echo.rs")).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        let committed = std::fs::read_to_string(dir.join("src/echo.rs")).unwrap();
        // The committed file starts with a note on where it comes from, then the output.
        let body = committed
            .split_once("\n\n")
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        assert!(
            body == fresh,
            "src/echo.rs is stale: regenerate it (see its first lines)"
        );
    }
}

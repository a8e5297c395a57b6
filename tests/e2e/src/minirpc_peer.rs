//! MiniRPC peers for the end-to-end tests: a blocking client and a threaded server.
//!
//! The server answers `echo`-like methods with `<tag>:<payload>` and a `server: <tag>` header
//! plus every request header (so tests see mutations), counts one-way calls (method `count`
//! reports the number), answers pings, and closes the connection on method `crash`. It also
//! misbehaves on request: method `dup` is answered twice (the copy 100 ms later, when the
//! connection may carry someone else's call), `wrongid` with another request id.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use meltemi_sdk::{Codec, Message, Metadata};
use minirpc::{frame, kind, MiniRpc};

use crate::workspace;

/// One decoded frame as a client or server sees it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Wire kind (see `minirpc::kind`).
    pub kind: u8,
    /// Request id.
    pub id: u64,
    /// Headers.
    pub headers: Metadata,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Encodes a frame.
pub fn encode(kind: u8, id: u64, headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let md: Metadata = headers.iter().map(|(k, v)| (*k, *v)).collect();
    let mut out = Vec::new();
    frame::write(&mut out, kind, id, &md, payload).expect("frame fits");
    out
}

/// A two-way request to service `demo`.
pub fn request(id: u64, method: &str, extra: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut headers = vec![("service", "demo"), ("method", method)];
    headers.extend_from_slice(extra);
    encode(kind::REQUEST, id, &headers, payload)
}

/// Reads exactly one frame from `stream`.
pub fn read_frame(stream: &mut TcpStream) -> io::Result<Frame> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed)?;
    let len = u32::from_be_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
    let mut bytes = fixed.to_vec();
    bytes.resize(16 + len, 0);
    stream.read_exact(&mut bytes[16..])?;
    let message: Message = MiniRpc
        .decode(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete frame"))?;
    let payload_at = 16
        + 2
        + message
            .metadata
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>();
    Ok(Frame {
        kind: bytes[2],
        id: message.request_id,
        headers: message.metadata,
        payload: bytes[payload_at..].to_vec(),
    })
}

/// A blocking client connection.
pub struct Client {
    stream: TcpStream,
}

impl Client {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Client {
        Client {
            stream: crate::load::connect(port),
        }
    }

    /// The socket (to clone a writer for another thread).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends bytes one at a time, flushing each (worst-case chunking through Envoy).
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.stream
                .write_all(std::slice::from_ref(b))
                .expect("send byte");
            self.stream.flush().expect("flush");
        }
    }

    /// Reads the next frame.
    pub fn recv(&mut self) -> io::Result<Frame> {
        read_frame(&mut self.stream)
    }

    /// Sends a request and reads one frame.
    pub fn call(&mut self, bytes: &[u8]) -> Frame {
        self.send(bytes);
        self.recv().expect("response frame")
    }

    /// True when the server side closed the connection (read returns EOF or reset).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// A running MiniRPC server; stops accepting on drop.
pub struct Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// One-way calls received.
    pub oneways: Arc<AtomicU64>,
    /// Pings received (the bridge should answer them itself).
    pub pings: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server whose answers carry `tag`.
    pub fn start(tag: &str) -> Server {
        let listener = workspace::listener();
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let oneways = Arc::new(AtomicU64::new(0));
        let pings = Arc::new(AtomicU64::new(0));
        let tag = tag.to_owned();
        let (stop2, oneways2, pings2) =
            (Arc::clone(&stop), Arc::clone(&oneways), Arc::clone(&pings));
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (tag, oneways, pings) =
                    (tag.clone(), Arc::clone(&oneways2), Arc::clone(&pings2));
                std::thread::spawn(move || serve(conn, &tag, &oneways, &pings));
            }
        });
        Server {
            port,
            oneways,
            pings,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn serve(mut conn: TcpStream, tag: &str, oneways: &AtomicU64, pings: &AtomicU64) {
    let _ = conn.set_nodelay(true);
    while let Ok(f) = read_frame(&mut conn) {
        let method = f.headers.get("method").unwrap_or("").to_owned();
        let reply = match f.kind {
            kind::PING => {
                pings.fetch_add(1, Ordering::SeqCst);
                encode(kind::PONG, f.id, &[], &[])
            }
            kind::ONEWAY => {
                oneways.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            kind::REQUEST if method == "crash" => {
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
            kind::REQUEST if method == "dup" => {
                let reply = encode(kind::RESPONSE, f.id, &[("server", tag)], b"dup");
                if conn.write_all(&reply).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                reply
            }
            kind::REQUEST if method == "once" => {
                // Answers, then closes: a server that serves one call per connection.
                let reply = encode(kind::RESPONSE, f.id, &[("server", tag)], b"once");
                let _ = conn.write_all(&reply);
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
            kind::REQUEST if method == "wrongid" => encode(
                kind::RESPONSE,
                f.id.wrapping_add(1000),
                &[("server", tag)],
                b"wrong",
            ),
            kind::REQUEST if method == "count" => {
                let n = oneways.load(Ordering::SeqCst).to_string();
                encode(kind::RESPONSE, f.id, &[("server", tag)], n.as_bytes())
            }
            kind::REQUEST => {
                let mut headers: Vec<(&str, &str)> = vec![("server", tag)];
                headers.extend(f.headers.iter());
                let mut payload = format!("{tag}:").into_bytes();
                payload.extend_from_slice(&f.payload);
                encode(kind::RESPONSE, f.id, &headers, &payload)
            }
            _ => continue,
        };
        if conn.write_all(&reply).is_err() {
            return;
        }
    }
}

/// The MiniRPC example deployed: two tagged servers (v1, v2) behind a real Envoy running the
/// bridge from `examples/minirpc/envoy/bridge.yaml`.
pub struct Deployment {
    /// The running Envoy.
    pub envoy: crate::envoy::Envoy,
    /// Envoy's MiniRPC listener on 127.0.0.1.
    pub port: u16,
    /// Server answering as `v1`.
    pub v1: Server,
    /// Server answering as `v2`.
    pub v2: Server,
}

impl Deployment {
    /// Builds `minirpc.wasm`, starts both servers and Envoy.
    pub fn start(name: &str) -> Deployment {
        Self::start_with_front(name, None)
    }

    /// The same deployment on `engine`, rendered by [`crate::bootstrap::Bridge`] with the
    /// hand-written example's routes (the wasm engine is the example itself).
    pub fn start_on(engine: crate::bootstrap::Engine, name: &str) -> Deployment {
        Self::start_on_with_front(engine, name, None)
    }

    /// [`Deployment::start_on`] with the front's configuration replaced by `front` (as
    /// [`Deployment::start_with_front`] does; the label values the controller would name are
    /// added for the native build's metrics).
    pub fn start_on_with_front(
        engine: crate::bootstrap::Engine,
        name: &str,
        front: Option<serde_json::Value>,
    ) -> Deployment {
        Self::start_on_with_options(engine, name, front, false)
    }

    /// [`Deployment::start_on_with_front`]; with `one_call_per_connection`, Envoy opens a new
    /// server connection for every call (`max_requests_per_connection: 1` on the destination
    /// clusters: what an Istio user sets for a server that closes after every answer, with a
    /// DestinationRule's `connectionPool.http.maxRequestsPerConnection: 1`). Rendered by
    /// [`crate::bootstrap::Bridge`] for every engine.
    pub fn start_on_with_options(
        engine: crate::bootstrap::Engine,
        name: &str,
        front: Option<serde_json::Value>,
        one_call_per_connection: bool,
    ) -> Deployment {
        use crate::bootstrap::{route_action, Bridge, Destination, Engine};
        use crate::workspace;
        use serde_json::json;
        if engine == Engine::Wasm && !one_call_per_connection {
            return Self::start_with_front(name, front);
        }
        let wasm = workspace::build_for(engine, "minirpc");
        let (v1, v2) = (Server::start("v1"), Server::start("v2"));
        let (port, admin) = (workspace::free_port(), workspace::free_port());
        let to = |path: &str, cluster: &str| json!({"match": {"prefix": format!("/demo/{path}")}, "route": route_action(cluster)});
        let mut tagged = to("tagged", "demo_v1");
        tagged["request_headers_to_add"] = json!([{
            "header": {"key": "x-meltemi-mutation", "value": "env=canary"},
            "append_action": "APPEND_IF_EXISTS_OR_ADD"
        }]);
        let routes = vec![
            to("sayHello", "demo_v1"),
            to("sayBye", "demo_v2"),
            json!({
                "match": {"prefix": "/demo/", "headers": [{"name": "version", "string_match": {"exact": "v2"}}]},
                "route": route_action("demo_v2")
            }),
            tagged,
            to("echo", "demo_v1"),
            to("notify", "demo_v1"),
            to("count", "demo_v1"),
            to("crash", "demo_v1"),
            to("dup", "demo_v1"),
            to("wrongid", "demo_v1"),
            to("once", "demo_v1"),
        ];
        let limits = json!({"max_frame_bytes": 4194304, "max_pending_requests": 256});
        let config = Bridge {
            protocol: "minirpc",
            wasm: &wasm,
            engine,
            module: "minirpc",
            // What the controller fills in from the routes: the native build defines metrics
            // for these label values when it loads (others are reported as `other`).
            front: {
                let mut f = front.unwrap_or_else(|| json!({"limits": limits}));
                if f.get("known_services").is_none() {
                    f["known_services"] = json!(["demo"]);
                }
                if f.get("known_methods").is_none() {
                    f["known_methods"] = json!([
                        "sayHello", "sayBye", "tagged", "echo", "notify", "count", "crash", "dup",
                        "wrongid", "nope"
                    ]);
                }
                f
            },
            back: json!({"limits": {"max_frame_bytes": 4194304}}),
            listen_port: port,
            admin_port: admin,
            destinations: vec![
                Destination {
                    cluster: "demo_v1".into(),
                    port: v1.port,
                },
                Destination {
                    cluster: "demo_v2".into(),
                    port: v2.port,
                },
            ],
            virtual_hosts: vec![json!({"name": "demo", "domains": ["demo"], "routes": routes})],
            http_filters: vec![],
        }
        .render();
        let config = if one_call_per_connection {
            let mut b: serde_json::Value = serde_json::from_str(&config).expect("bootstrap");
            for c in b["static_resources"]["clusters"]
                .as_array_mut()
                .expect("clusters")
                .iter_mut()
                .filter(|c| c["name"] == "demo_v1" || c["name"] == "demo_v2")
            {
                c["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "common_http_protocol_options": {"max_requests_per_connection": 1},
                        "explicit_http_config": {"http_protocol_options": {}}
                    }
                });
            }
            b.to_string()
        } else {
            config
        };
        let envoy =
            crate::envoy::Envoy::start(&format!("{name}-{}", engine.name()), &config, admin);
        Deployment {
            envoy,
            port,
            v1,
            v2,
        }
    }

    /// The same with the front's plugin configuration replaced by `front` (a JSON object;
    /// `role` is set here).
    pub fn start_with_front(name: &str, front: Option<serde_json::Value>) -> Deployment {
        use crate::workspace;
        let wasm = workspace::build_wasm("minirpc");
        let (v1, v2) = (Server::start("v1"), Server::start("v2"));
        let (port, admin) = (workspace::free_port(), workspace::free_port());
        let path = workspace::root().join("examples/minirpc/envoy/bridge.yaml");
        let template = std::fs::read_to_string(&path).expect("examples/minirpc/envoy/bridge.yaml");
        let config = workspace::render(
            &template,
            &[
                ("ADMIN_PORT", admin.to_string()),
                ("LISTEN_PORT", port.to_string()),
                ("V1_PORT", v1.port.to_string()),
                ("V2_PORT", v2.port.to_string()),
                ("WASM", wasm.display().to_string()),
            ],
        );
        const SHIPPED: &str = r#"'{"role": "front", "limits": {"max_frame_bytes": 4194304, "max_pending_requests": 256}}'"#;
        let forced = workspace::hcm_protocol_override();
        let front = match (front, forced) {
            (None, Some(_)) => {
                Some(serde_json::from_str(SHIPPED.trim_matches('\'')).expect("shipped JSON"))
            }
            (front, _) => front,
        };
        let config = match front {
            None => config,
            Some(mut front) => {
                assert!(config.contains(SHIPPED), "front configuration not found");
                front["role"] = serde_json::json!("front");
                if let (Some(p), None) = (forced, front.get("hcm_protocol")) {
                    front["hcm_protocol"] = serde_json::json!(p);
                }
                config.replacen(SHIPPED, &format!("'{front}'"), 1)
            }
        };
        let config = if config.contains(r#""hcm_protocol":"http2""#) {
            const HTTP1: &str = "          codec_type: HTTP1\n";
            assert!(config.contains(HTTP1), "HCM codec_type not found");
            let options = crate::bootstrap::http2_options();
            config.replacen(
                HTTP1,
                &format!(
                    "          codec_type: HTTP2\n          http2_protocol_options: {options}\n"
                ),
                1,
            )
        } else {
            config
        };
        let envoy = crate::envoy::Envoy::start(name, &config, admin);
        Deployment {
            envoy,
            port,
            v1,
            v2,
        }
    }
}

//! Drives the `testdata/echo-filter` module (built for wasm32-wasip1 on first use) through the
//! host and checks Envoy's semantics end to end.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use meltemi_wasm_host::abi::log_level;
use meltemi_wasm_host::{try_build_wasm_in, Action, ConnId, Host, HostError, Module};

/// The echo filter, built and compiled once per test process.
fn echo() -> Module {
    static MODULE: OnceLock<Module> = OnceLock::new();
    MODULE
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
            let target = dir.join("../../target/wasm-host-testdata");
            let wasm = try_build_wasm_in(&dir.join("testdata/echo-filter"), "echo-filter", &target)
                .unwrap();
            Module::load(wasm).unwrap()
        })
        .clone()
}

/// A configured host with the default upstream prefix.
fn host() -> Host {
    let mut host = Host::new(&echo(), "vm-config").unwrap();
    assert!(host.configure("").unwrap());
    host
}

fn logged(host: &Host, text: &str) -> bool {
    host.logs().iter().any(|(_, line)| line == text)
}

fn last_log(host: &Host) -> &str {
    host.logs().last().map_or("", |(_, line)| line)
}

#[test]
fn startup_captures_wasi_output_and_configuration() {
    let mut host = Host::new(&echo(), "vm-config").unwrap();
    let logs = host.logs().to_vec();
    assert!(logs.contains(&(log_level::INFO, "stdout: vm config is vm-config".to_owned())));
    assert!(logs.contains(&(log_level::ERROR, "stderr: vm starting".to_owned())));
    assert_eq!(host.tick_period_ms(), 0);

    assert!(host.configure("").unwrap());
    assert!(logged(&host, "configured"));
    assert_eq!(host.tick_period_ms(), 250);
    assert_eq!(
        host.metric_names(),
        ["echo.active", "echo.bytes_in", "echo.chunk_size"]
    );
    assert!(!host.configure("reject").unwrap());
}

#[test]
fn complete_lines_are_uppercased_and_counted() {
    let mut host = host();
    let c = host.new_connection().unwrap();
    assert_eq!(host.last_action(c), Some(Action::Continue));
    assert_eq!(host.gauge("echo.active"), Some(1));

    assert_eq!(
        host.downstream_data(c, b"hello\n", false).unwrap(),
        Action::Continue
    );
    assert_eq!(host.read_buffer(c), b"HELLO\n");
    assert_eq!(host.counter("echo.bytes_in"), Some(6));
    assert_eq!(host.histogram("echo.chunk_size"), [6]);
    assert_eq!(host.counter("no.such.metric"), None);
}

#[test]
fn chunked_input_accumulates_in_the_read_buffer() {
    let mut host = host();
    let c = host.new_connection().unwrap();
    assert_eq!(
        host.downstream_data(c, b"hel", false).unwrap(),
        Action::Pause
    );
    assert_eq!(host.read_buffer(c), b"hel");
    assert_eq!(
        host.downstream_data(c, b"lo", false).unwrap(),
        Action::Pause
    );
    assert_eq!(
        host.downstream_data(c, b"\nx", false).unwrap(),
        Action::Continue
    );
    assert_eq!(host.read_buffer(c), b"HELLO\nX");

    // The next filter consumes the complete line and leaves the rest behind, as HCM does.
    host.drain_read(c, 6);
    assert_eq!(host.read_buffer(c), b"X");
    assert_eq!(
        host.downstream_data(c, b"yz\n", false).unwrap(),
        Action::Continue
    );
    assert_eq!(host.read_buffer(c), b"XYZ\n");
    assert_eq!(host.histogram("echo.chunk_size"), [7, 4]);

    // End of stream flushes an incomplete line.
    host.drain_read(c, usize::MAX);
    assert_eq!(
        host.downstream_data(c, b"tail", true).unwrap(),
        Action::Continue
    );
    assert_eq!(host.read_buffer(c), b"TAIL");
}

/// Sends `SETRAW <start> <size> <data>` and returns (status logged, read buffer after).
fn set_raw(start: usize, size: usize, data: &str) -> (String, Vec<u8>) {
    let mut host = host();
    let c = host.new_connection().unwrap();
    let command = format!("SETRAW {start} {size} {data}");
    host.downstream_data(c, command.as_bytes(), false).unwrap();
    (last_log(&host).to_owned(), host.read_buffer(c).to_vec())
}

#[test]
fn set_buffer_follows_envoy_rules() {
    // (0, 0) prepends.
    assert_eq!(
        set_raw(0, 0, "P"),
        ("setraw status=0".into(), b"PSETRAW 0 0 P".to_vec())
    );
    // (0, >= len) replaces the whole buffer.
    assert_eq!(
        set_raw(0, 999, "R"),
        ("setraw status=0".into(), b"R".to_vec())
    );
    // start >= len appends (start == len and start beyond len).
    assert_eq!(
        set_raw(13, 0, "A"),
        ("setraw status=0".into(), b"SETRAW 13 0 AA".to_vec())
    );
    assert_eq!(
        set_raw(999, 5, "A"),
        ("setraw status=0".into(), b"SETRAW 999 5 AA".to_vec())
    );
    // (0, n < len) drains n bytes then prepends: Envoy replaces a prefix.
    assert_eq!(
        set_raw(0, 6, "X"),
        ("setraw status=0".into(), b"X 0 6 X".to_vec())
    );
    // A middle start is BadArgument and leaves the buffer alone.
    assert_eq!(
        set_raw(3, 2, "M"),
        ("setraw status=2".into(), b"SETRAW 3 2 M".to_vec())
    );
}

#[test]
fn get_buffer_clips_and_reports_empty_ranges_as_null() {
    let mut host = host();
    let c = host.new_connection().unwrap();
    let mut get = |command: &str| {
        host.downstream_data(c, command.as_bytes(), false).unwrap();
        host.drain_read(c, usize::MAX);
        last_log(&host).to_owned()
    };
    assert_eq!(get("GETRAW 0 3"), "getraw status=0 len=3 data=GET");
    assert_eq!(
        get("GETRAW 2 1000"),
        "getraw status=0 len=11 data=TRAW 2 1000"
    );
    assert_eq!(get("GETRAW 0 0"), "getraw status=0 len=0 data=<null>");
    assert_eq!(get("GETRAW 100 5"), "getraw status=0 len=0 data=<null>");
}

#[test]
fn upstream_data_gets_a_fresh_buffer_per_write() {
    let mut host = Host::new(&echo(), "").unwrap();
    assert!(host.configure("up: ").unwrap());
    let c = host.new_connection().unwrap();
    let (action, written) = host.upstream_data(c, b"one", false).unwrap();
    assert_eq!(
        (action, written.as_slice()),
        (Action::Continue, &b"up: one"[..])
    );
    let (_, written) = host.upstream_data(c, b"two", true).unwrap();
    assert_eq!(written, b"up: two");
    let id = c.context_id();
    assert!(logged(&host, &format!("upstream close {id} peer=0")));
    // The read buffer is untouched by the write path.
    assert!(host.read_buffer(c).is_empty());
}

#[test]
fn paused_connection_is_resumed_from_tick_with_effective_context() {
    let mut host = host();
    let a = host.new_connection().unwrap();
    let b = host.new_connection().unwrap();
    assert_eq!(
        host.downstream_data(a, b"WAIT for it", false).unwrap(),
        Action::Pause
    );
    // b asked to wait too, but then completed its line: Envoy no longer exposes its buffer.
    assert_eq!(
        host.downstream_data(b, b"WAIT", false).unwrap(),
        Action::Pause
    );
    assert_eq!(
        host.downstream_data(b, b"\n", false).unwrap(),
        Action::Continue
    );
    host.drain_read(b, usize::MAX);
    host.downstream_data(b, b"rest", false).unwrap();
    host.downstream_data(b, b"\n", false).unwrap();

    host.advance_time(Duration::from_secs(2));
    host.tick().unwrap();
    let now = host.now_nanos();
    assert_eq!(now, 1_700_000_002_000_000_000);
    assert!(logged(&host, &format!("tick at {now}")));
    let (a_id, b_id) = (a.context_id(), b.context_id());
    assert!(logged(&host, &format!("tick resumes {a_id} with 11 bytes")));
    assert!(logged(&host, &format!("tick resumes {b_id} with 0 bytes")));
    assert_eq!(host.read_buffer(a), b"WAIT FOR IT");
    assert_eq!(host.read_buffer(b), b"REST\n");
    assert_eq!((host.continued(a), host.continued(b)), (1, 1));
}

#[test]
fn a_panic_is_a_trap_and_poisons_the_host() {
    let mut host = host();
    let c = host.new_connection().unwrap();
    let Err(HostError::Trap(message)) = host.downstream_data(c, b"PANIC\n", false) else {
        panic!("expected a trap");
    };
    assert!(message.contains("proxy_on_downstream_data"), "{message}");
    assert!(
        message.contains("echo-filter was asked to panic"),
        "{message}"
    );
    assert!(message.contains("wasm backtrace"), "{message}");
    assert!(host.poisoned().is_some());
    assert!(matches!(host.tick(), Err(HostError::Trap(m)) if m.contains("trapped earlier")));
}

#[test]
fn an_unimplemented_import_is_a_trap_naming_it() {
    let mut host = host();
    let c = host.new_connection().unwrap();
    let Err(HostError::Trap(message)) = host.downstream_data(c, b"HTTPCALL\n", false) else {
        panic!("expected a trap");
    };
    assert!(message.contains("proxy_http_call"), "{message}");
}

#[test]
fn close_stream_and_connection_lifecycle() {
    let mut host = host();
    let c = host.new_connection().unwrap();
    let id = c.context_id();
    assert!(!host.closed(c));
    host.downstream_data(c, b"CLOSE\n", false).unwrap();
    assert!(host.closed(c));

    host.downstream_close(c).unwrap();
    assert!(logged(&host, &format!("downstream close {id} peer=2")));
    assert!(logged(&host, &format!("done {id}")));
    assert_eq!(host.gauge("echo.active"), Some(0));
    assert!(matches!(
        host.downstream_data(c, b"late", false),
        Err(HostError::Abi(_))
    ));
    // Contexts ids keep increasing; the deleted context is unknown to set_effective_context.
    let next: ConnId = host.new_connection().unwrap();
    assert_eq!(next.context_id(), id + 1);
}

#[test]
fn properties_are_served_by_path() {
    let mut host = host();
    host.new_connection().unwrap();
    assert!(last_log(&host).ends_with("from <none>"));
    host.set_property(&["source", "address"], b"10.0.0.1:1234");
    let c = host.new_connection().unwrap();
    let expected = format!("new connection {} from 10.0.0.1:1234", c.context_id());
    assert_eq!(last_log(&host), expected);
}

#[test]
fn runs_are_deterministic() {
    let run = || {
        let mut host = host();
        let c = host.new_connection().unwrap();
        host.downstream_data(c, b"WAIT", false).unwrap();
        host.advance_time(Duration::from_millis(250));
        host.tick().unwrap();
        host.logs().to_vec()
    };
    assert_eq!(run(), run());
}

#[test]
fn modules_without_the_proxy_wasm_abi_are_rejected() {
    let empty_module = b"\0asm\x01\0\0\0";
    assert!(
        matches!(Module::from_bytes(empty_module), Err(HostError::Load(m)) if m.contains("proxy_abi_version"))
    );
    assert!(matches!(
        Module::from_bytes(b"not wasm"),
        Err(HostError::Load(_))
    ));
    assert!(matches!(
        Module::load("/no/such/file.wasm"),
        Err(HostError::Load(_))
    ));
}

"""Shared pieces of the Thrift test peers: command line, handler behaviour, sample values.

Both implementations (Apache `thrift` and `thriftpy2`) behave the same way, so a test can swap
one for the other and see the same answers; `--tag` makes `echo` say which server answered.
"""

import argparse
import sys
import threading

_log_lock = threading.Lock()


def log_line(text):
    """One whole stdout line from a threaded server: `print` writes the text and the newline
    separately, so two handler threads could put two calls on one line (a test counting lines
    then misses one)."""
    with _log_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def parse_args(role, transports=("buffered", "framed", "header")):
    p = argparse.ArgumentParser(description=f"Thrift Echo {role}")
    p.add_argument("--transport", choices=transports, default="framed")
    p.add_argument("--protocol", choices=("binary", "compact"), default="binary")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--multiplex", metavar="SERVICE", help="use TMultiplexedProtocol/Processor with this name")
    if role == "server":
        p.add_argument("--tag", default="", help="echo answers '<tag>:<msg>' so tests can tell servers apart")
    else:
        p.add_argument("--non-strict", action="store_true", help="binary protocol without the 0x8001 version")
        p.add_argument("--header", action="append", default=[], metavar="K=V", help="THeader info header per call")
        p.add_argument("--call", action="append", default=[], metavar="STEP",
                       help="calls scenario: METHOD[@K=V,...] (echo, add, inspect; THeader info "
                       "headers for that call) or wait:PATH (creates PATH.ready, then waits for PATH)")
        p.add_argument("--scenario", choices=("full", "echo", "e2e", "route", "inspect", "oneway", "calls"),
                       default="full",
                       help="full: one call of every shape (captured); echo: one echo; e2e: full plus "
                       "large/UTF-8/i64/one-way checks; route: calls for the proxy's routing table "
                       "(Apache only); inspect: print what the server saw; oneway: a one-way call "
                       "first on the connection, then two-way calls; calls: the --call steps on "
                       "one connection, each answer or TApplicationException printed (Apache only)")
        p.add_argument("--msg", default="hello")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("peers bind and connect to loopback only")
    return args


class Handler:
    """The Echo service. `exc` builds the declared EchoError, `app_exc` a TApplicationException."""

    def __init__(self, tag, exc, app_exc, info_headers=dict):
        """`info_headers()` returns the THeader info headers of the call being handled."""
        self.tag, self.exc, self.app_exc = tag, exc, app_exc
        self.info_headers = info_headers
        self.notified = []

    def echo(self, msg):
        return f"{self.tag}:{msg}" if self.tag else msg

    def add(self, a, b):
        return a + b

    def blob(self, data):
        return bytes(reversed(data))

    def fail(self, why):
        if why == "internal":
            raise self.app_exc(why)
        raise self.exc(why)

    def notify(self, msg):
        self.notified.append(msg)

    def mirror(self, item):
        return item

    def ping(self):
        return None

    def inspect(self):
        seen = {"tag": self.tag, "notified": "|".join(self.notified)}
        for k, v in self.info_headers().items():
            k = k.decode("utf-8", "replace") if isinstance(k, bytes) else k
            v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            seen[f"h:{k}"] = v
        return seen


def sample_item(item_cls, inner_cls):
    return item_cls(
        name="item",
        values=[1, -2, 300000],
        tags={"a": ["x", "y"], "empty": []},
        inner=[inner_cls(rows=[{"k": 1}, {}], ids={7, -8}, flag=True), inner_cls(rows=[], ids=set(), flag=False)],
        score=2.5,
        raw=b"\x00\xff",
        small=-3,
        tiny=9,
    )


def normalize(v):
    """Comparable form of a value: thriftpy2 reads sets back as lists, Apache as sets."""
    if isinstance(v, (set, frozenset, list, tuple)):
        items = [normalize(x) for x in v]
        return sorted(items, key=repr) if isinstance(v, (set, frozenset)) else items
    if isinstance(v, dict):
        return {k: normalize(x) for k, x in v.items()}
    if hasattr(v, "__dict__"):
        return {k: normalize(x) for k, x in vars(v).items()}
    return v


def run_full(client, item_cls, inner_cls, exc_cls, app_exc_cls, msg, before_call=lambda: None):
    """The scenario whose bytes are captured: one of every method shape. Prints one line each."""
    before_call()
    print("echo", client.echo(msg))
    before_call()
    print("add", client.add(2, -5))
    before_call()
    print("blob", client.blob(b"\x01\x02\xff").hex())
    before_call()
    try:
        client.fail("boom")
        raise SystemExit("fail did not raise")
    except exc_cls as e:
        print("fail", "EchoError", e.why)
    before_call()
    try:
        client.fail("internal")
        raise SystemExit("fail(internal) did not raise")
    except app_exc_cls as e:
        print("fail", "TApplicationException", e.type)
    before_call()
    client.notify("fire")
    print("notify sent")
    before_call()
    item = sample_item(item_cls, inner_cls)
    got = client.mirror(item)
    assert normalize(got) == normalize(item), (got, item)
    print("mirror ok")
    before_call()
    print("ping", client.ping())


# Sent by the e2e scenario: non-ASCII Latin, CJK, a 4-byte emoji and a combining mark.
UTF8_SAMPLE = "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001F980\U0001F680 e\u0301"
I64_MAX, I64_MIN = 2**63 - 1, -(2**63)


def show_inspect(seen):
    """One line for `inspect()`: the tag, then the info headers sorted (`notified` left out)."""
    parts = [f"tag={seen.get('tag')}"] + sorted(f"{k}={v}" for k, v in seen.items() if k.startswith("h:"))
    return "inspect " + " ".join(parts)


def run_oneway(client, msg):
    """A one-way call as the connection's first call, then two-way calls on the same connection:
    through a proxy they may reuse the upstream connection the one-way call went out on."""
    token = f"first-{msg}"
    client.notify(token)
    notified = client.inspect()["notified"].split("|")
    print("oneway", "delivered" if token in notified else f"MISSING from {notified}")
    print("echo", client.echo(msg))
    print("add", client.add(2, -5))
    client.notify(token + "-2")
    print("echo", client.echo(msg + "-2"))


def run_e2e(client, item_cls, inner_cls, exc_cls, app_exc_cls, msg):
    """`full`, then what a proxy most easily breaks. Prints only values the test can predict."""
    run_full(client, item_cls, inner_cls, exc_cls, app_exc_cls, msg)
    # 100 kB: many TCP segments, several Envoy buffer slices, a multi-byte varint length.
    big = "".join(chr(ord("a") + i % 26) for i in range(100_000))
    got = client.echo(big)
    print("big", len(got), got[: len(got) - len(big)] if got.endswith(big) else "CORRUPT")
    print("utf8", client.echo(UTF8_SAMPLE))
    print("i64", client.add(I64_MAX, 0), client.add(I64_MIN, 0), client.add(-1, I64_MIN + 1),
          client.add(2**62, 2**62 - 1))
    try:
        client.fail("again")
        raise SystemExit("fail did not raise")
    except exc_cls as e:
        print("fail", "EchoError", e.why, e.code)
    # A one-way call is never answered; the next two-way call shows the server received it
    # (a proxy acknowledging one-way calls must not let that acknowledgement reach the client).
    token = f"ow-{msg}"
    client.notify(token)
    notified = client.inspect()["notified"].split("|")
    print("oneway", "delivered" if token in notified else f"MISSING from {notified}")
    print("after", client.echo(msg + "-after"))

"""Shared pieces of the Thrift test peers: command line, handler behaviour, sample values.

Both implementations (Apache `thrift` and `thriftpy2`) behave the same way, so a test can swap
one for the other and see the same answers; `--tag` makes `echo` say which server answered.
"""

import argparse


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
        p.add_argument("--scenario", choices=("full", "echo"), default="full")
        p.add_argument("--msg", default="hello")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("peers bind and connect to loopback only")
    return args


class Handler:
    """The Echo service. `exc` builds the declared EchoError, `app_exc` a TApplicationException."""

    def __init__(self, tag, exc, app_exc):
        self.tag, self.exc, self.app_exc = tag, exc, app_exc
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

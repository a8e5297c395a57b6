"""dubbo-ssl-python consumer, connected directly to 127.0.0.1:PORT.

    python3 py_consumer.py --port 20880 [--dubbo-version 2.4.10]

dubbo-ssl-python's default dubbo version (2.4.10) keeps Java providers from sending result
flags 3/4/5, which it cannot read; pass --dubbo-version 2.0.2 to see that bug.
"""
import argparse
import sys

from dubbo_ssl.client import DubboClient
from dubbo_ssl.codec.encoder import Object


def one_line(e):
    """The exception text on one line (dubbo-ssl-python starts messages with a newline)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=20880)
    ap.add_argument("--dubbo-version", default="2.4.10")
    a = ap.parse_args()
    client = DubboClient("org.meltemi.demo.EchoService", group="demo", version="1.0.0",
                         dubbo_version=a.dubbo_version, host="127.0.0.1:%d" % a.port)
    failures = 0

    def check(name, ok, what):
        nonlocal failures
        print("dubbo-ssl-python %s -> %s" % (name, what), flush=True)
        if not ok:
            failures += 1

    ctx = {"x-caller": "dubbo-ssl-python"}
    try:
        r = client.call("echo", ["hello"], context=ctx, timeout=5)
        check("echo", isinstance(r, str) and r.endswith(":hello"), repr(r))
    except Exception as e:  # noqa: BLE001 - the matrix records whatever the client raises
        check("echo", False, "raised %s: %s" % (type(e).__name__, one_line(e)))
    user = Object("org.meltemi.demo.User", {"name": "ann", "age": 41, "id": 7, "tags": ["py"]})
    try:
        r = client.call("greet", [user], context=ctx, timeout=5)
        check("greet", isinstance(r, dict) and str(r.get("name", "")).startswith("ann@"), repr(r))
    except Exception as e:  # noqa: BLE001
        check("greet", False, "raised %s: %s" % (type(e).__name__, one_line(e)))
    try:
        r = client.call("fail", ["boom"], context=ctx, timeout=5)
        check("fail", False, "no error, got %r" % (r,))
    except Exception as e:  # noqa: BLE001
        check("fail", "Timeout" not in type(e).__name__,
              "raised %s: %s" % (type(e).__name__, one_line(e)))
    print("dubbo-ssl-python: all calls OK" if failures == 0 else "dubbo-ssl-python: %d failures" % failures,
          flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""dubbo-ssl-python consumer, connected directly to 127.0.0.1:PORT.

    python3 py_consumer.py --port 20880 [--dubbo-version 2.4.10]
    python3 py_consumer.py --port 20880 --call 'IFACE|METHOD|ARG|k=v,k=v|' [--call ...]
        [--heartbeat-idle SECONDS]

With --call, runs the calls in order over the client's one pooled connection and prints
`CALL <i> OK <repr>` / `CALL <i> ERR <exception>` / `CALL <i> SKIP <why>`, then `DONE`.
`sleep|MS` pauses; greet sends User(ann, 41, 7, [ARG]); one-way is not supported by the client.
--heartbeat-idle makes the client's own heartbeat thread fire after that much idle time
(its default is 60 s) until the first `sleep` entry ends; that entry then prints
`HEARTBEATS sent=N unanswered=M`: the heartbeats the client sent and how many of them got no
heartbeat reply.

dubbo-ssl-python's default dubbo version (2.4.10) keeps Java providers from sending result
flags 3/4/5, which it cannot read; pass --dubbo-version 2.0.2 to see that bug.
"""
import argparse
import sys
import time

from dubbo_ssl.client import DubboClient
from dubbo_ssl.codec.encoder import Object


def one_line(e):
    """The exception text on one line (dubbo-ssl-python starts messages with a newline)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def script(a):
    """Runs the --call script over one connection (see the module docstring)."""
    import dubbo_ssl.connection.connections as connections

    host = "127.0.0.1:%d" % a.port
    pool = connections.connection_pool
    sent = [0]
    if a.heartbeat_idle is not None:
        # The heartbeat thread reads the module global on every check.
        connections.TIMEOUT_IDLE = a.heartbeat_idle
        # dubbo-ssl-python 0.9.6 bug: client_heartbeats[host] is never initialised, so its
        # heartbeat thread dies on a KeyError at every check and never sends a heartbeat.
        pool.client_heartbeats[host] = 0
        # The heartbeat thread takes each heartbeat's id from this function: count them.
        next_id = connections.get_invoke_id

        def counting_id():
            sent[0] += 1
            return next_id()
        connections.get_invoke_id = counting_id
    clients = {}
    for i, spec in enumerate(a.call):
        iface, method, arg, att, mode = (spec.split("|") + [""] * 5)[:5]
        if iface == "sleep":
            time.sleep(int(method) / 1000)
            if a.heartbeat_idle is not None:
                # Stop heartbeating for good (so the count stays exact) and give the last one
                # time to be answered before counting.
                connections.TIMEOUT_IDLE = 1e9
                time.sleep(0.2)
                print("HEARTBEATS sent=%d unanswered=%d" % (sent[0], pool.client_heartbeats.get(host, -1)),
                      flush=True)
            continue
        if mode == "oneway":
            print("CALL %d SKIP one-way calls are not supported by dubbo-ssl-python" % i, flush=True)
            continue
        client = clients.setdefault(iface, DubboClient(iface, group="demo", version="1.0.0",
                                                       dubbo_version=a.dubbo_version, host=host))
        ctx = {"x-caller": "dubbo-ssl-python"}
        ctx.update(kv.split("=", 1) for kv in att.split(",") if kv)
        argument = Object("org.meltemi.demo.User", {"name": "ann", "age": 41, "id": 7, "tags": [arg]}) \
            if method == "greet" else arg
        try:
            r = client.call(method, [argument], context=ctx, timeout=5)
            print("CALL %d OK %r" % (i, r), flush=True)
        except Exception as e:  # noqa: BLE001 - the caller judges whatever the client raises
            print("CALL %d ERR %s: %s" % (i, type(e).__name__, " ".join(str(e).split())), flush=True)
    print("DONE", flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=20880)
    ap.add_argument("--dubbo-version", default="2.4.10")
    ap.add_argument("--call", action="append", default=[])
    ap.add_argument("--heartbeat-idle", type=float)
    a = ap.parse_args()
    if a.call:
        return script(a)
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

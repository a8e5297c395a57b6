#!/usr/bin/env python3
"""Echo client on Apache Thrift (PyPI `thrift`): buffered/framed/header x binary/compact."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError, Inner, Item  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol, THeaderProtocol, TMultiplexedProtocol  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport import THeaderTransport, TSocket, TTransport  # noqa: E402

from peer_common import parse_args, run_e2e, run_full, run_oneway, show_inspect  # noqa: E402


def run_route(client, header_proto, msg):
    """Calls for a proxy that routes by method and by the THeader info header `x-version`, with
    no route for `fail`; all on this one connection. Each line names the server that answered."""
    print("echo", client.echo(msg + "1"))
    print(show_inspect(client.inspect()))
    if header_proto is not None:
        # For the next call only; mixed case, as routes must match it lower-cased.
        header_proto.set_header(b"X-Version", b"v2")
        print("echo X-Version=v2", client.echo(msg + "2"))
    print("add", client.add(40, 2))
    try:
        print("fail returned", client.fail("boom"))
    except EchoError as e:
        print("fail EchoError", e.why)
    except TApplicationException as e:
        print(f"fail TApplicationException type={e.type}")
    print("echo", client.echo(msg + "3"))


def run_calls(client, header_proto, msg, steps):
    """The `--call` steps on this one connection, for proxies that refuse some calls: each
    call prints `CALL <i> OK <answer>` or `CALL <i> ERR TApplicationException type=<t> ...`
    and the next call goes on the same connection. `wait:PATH` creates `PATH.ready` and
    waits until PATH exists, so that a test can change the proxy between two calls."""
    import time
    for i, step in enumerate(steps):
        if step.startswith("wait:"):
            path = step[len("wait:"):]
            open(path + ".ready", "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    raise SystemExit(f"step {i}: {path} never appeared")
                time.sleep(0.01)
            continue
        method, _, headers = step.partition("@")
        for kv in filter(None, headers.split(",")):
            if header_proto is None:
                raise SystemExit("headers need --transport header")
            k, _, v = kv.partition("=")
            header_proto.set_header(k.encode(), v.encode())
        try:
            if method == "echo":
                got = client.echo(f"{msg}{i}")
            elif method == "add":
                got = client.add(40, 2)
            elif method == "inspect":
                got = show_inspect(client.inspect())
            else:
                raise SystemExit(f"unknown method in step {step!r}")
            print(f"CALL {i} OK {got}", flush=True)
        except TApplicationException as e:
            print(f"CALL {i} ERR TApplicationException type={e.type} message={e.message}", flush=True)
    print("DONE", flush=True)


def main():
    args = parse_args("client")
    sock = TSocket.TSocket(args.host, args.port)
    sock.setTimeout(10000)
    header_proto = None
    if args.transport == "header":
        sub = (THeaderTransport.THeaderSubprotocolID.COMPACT if args.protocol == "compact"
               else THeaderTransport.THeaderSubprotocolID.BINARY)
        header_proto = THeaderProtocol.THeaderProtocol(
            sock, allowed_client_types=(THeaderTransport.THeaderClientType.HEADERS,), default_protocol=sub)
        transport, proto = header_proto.trans, header_proto
    else:
        transport = TTransport.TFramedTransport(sock) if args.transport == "framed" else TTransport.TBufferedTransport(sock)
        if args.protocol == "compact":
            proto = TCompactProtocol.TCompactProtocol(transport)
        else:
            proto = TBinaryProtocol.TBinaryProtocol(transport, strictRead=False, strictWrite=not args.non_strict)
    if args.multiplex:
        proto = TMultiplexedProtocol.TMultiplexedProtocol(proto, args.multiplex)
    client = Echo.Client(proto)
    transport.open()

    def set_headers():
        for kv in args.header:
            k, _, v = kv.partition("=")
            if header_proto is None:
                raise SystemExit("--header needs --transport header")
            header_proto.set_header(k.encode(), v.encode())

    try:
        if args.scenario == "echo":
            set_headers()
            try:
                print("echo", client.echo(args.msg))
            except TApplicationException as e:
                print(f"TApplicationException type={e.type} message={e.message}")
        elif args.scenario == "e2e":
            run_e2e(client, Item, Inner, EchoError, TApplicationException, args.msg)
        elif args.scenario == "inspect":
            set_headers()
            print(show_inspect(client.inspect()))
        elif args.scenario == "route":
            run_route(client, header_proto, args.msg)
        elif args.scenario == "calls":
            run_calls(client, header_proto, args.msg, args.call)
        elif args.scenario == "oneway":
            run_oneway(client, args.msg)
        else:
            run_full(client, Item, Inner, EchoError, TApplicationException, args.msg, set_headers)
    finally:
        transport.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Scripted Echo client on Apache Thrift (PyPI `thrift`), THeader transport, for the routing
scenarios: runs `--call METHOD|ARG|K=V,K=V` steps (repeated `--repeat` times) over ONE
connection, each with its own THeader info headers, and prints one line per call:
`CALL <i> OK <answer> resp=<sorted response headers>` or `CALL <i> ERR <exception>`, then DONE.
The response headers show what a proxy wrote into the response (response mutation)."""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.protocol import THeaderProtocol  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport import THeaderTransport, TSocket  # noqa: E402

from peer_common import show_inspect  # noqa: E402


def text(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", choices=("binary", "compact"), default="compact")
    p.add_argument("--call", action="append", default=[], metavar="METHOD|ARG|K=V,...")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("peers connect to loopback only")
    sock = TSocket.TSocket(args.host, args.port)
    sock.setTimeout(10000)
    sub = (THeaderTransport.THeaderSubprotocolID.COMPACT if args.protocol == "compact"
           else THeaderTransport.THeaderSubprotocolID.BINARY)
    proto = THeaderProtocol.THeaderProtocol(
        sock, allowed_client_types=(THeaderTransport.THeaderClientType.HEADERS,), default_protocol=sub)
    client = Echo.Client(proto)
    proto.trans.open()
    i = 0
    try:
        for _ in range(args.repeat):
            for spec in args.call:
                method, arg, headers = (spec.split("|") + ["", ""])[:3]
                for kv in filter(None, headers.split(",")):
                    k, _, v = kv.partition("=")
                    proto.set_header(k.encode(), v.encode())
                try:
                    if method == "echo":
                        value = client.echo(arg)
                    elif method == "inspect":
                        value = show_inspect(client.inspect())
                    elif method == "add":
                        value = client.add(int(arg or 0), 1)
                    else:
                        raise SystemExit(f"unknown method {method}")
                    resp = ",".join(sorted(f"{text(k)}={text(v)}" for k, v in proto.trans.get_headers().items()))
                    print(f"CALL {i} OK {value} resp={resp}")
                except EchoError as e:
                    print(f"CALL {i} ERR EchoError {e.why}")
                except TApplicationException as e:
                    print(f"CALL {i} ERR TApplicationException type={e.type} {e.message}")
                i += 1
        print("DONE", flush=True)
    finally:
        proto.trans.close()


if __name__ == "__main__":
    main()

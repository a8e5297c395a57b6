#!/usr/bin/env python3
"""Apache Thrift (PyPI `thrift`) client making a list of calls on one connection and printing
each outcome, for tests that count answers and errors (rate limits):

    py_calls_client.py --port P --transport framed --protocol binary --call echo:a --call add ...

prints `CALL <i> OK <value>` or `CALL <i> ERR TApplicationException type=<t> message=<m>` per
call, then `DONE`. A protocol error reply leaves the connection usable, so one connection makes
every call."""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from echo import Echo  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402


def main():
    p = argparse.ArgumentParser(description="Thrift Echo client: a list of calls")
    p.add_argument("--transport", choices=("buffered", "framed"), default="framed")
    p.add_argument("--protocol", choices=("binary", "compact"), default="binary")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--call", action="append", default=[], metavar="echo:MSG|add")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("peers connect to loopback only")
    sock = TSocket.TSocket(args.host, args.port)
    sock.setTimeout(10000)
    transport = TTransport.TFramedTransport(sock) if args.transport == "framed" else TTransport.TBufferedTransport(sock)
    proto = (TCompactProtocol.TCompactProtocol(transport) if args.protocol == "compact"
             else TBinaryProtocol.TBinaryProtocol(transport))
    client = Echo.Client(proto)
    transport.open()
    try:
        for i, call in enumerate(args.call):
            method, _, arg = call.partition(":")
            try:
                if method == "echo":
                    value = client.echo(arg)
                elif method == "add":
                    value = client.add(40, 2)
                else:
                    raise SystemExit(f"unknown call {call}")
                print(f"CALL {i} OK {value}", flush=True)
            except TApplicationException as e:
                print(f"CALL {i} ERR TApplicationException type={e.type} message={e.message}", flush=True)
    finally:
        transport.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Apache Thrift (PyPI `thrift`) peers for the policy suite (tests/e2e/tests/policies.rs).

  policy_peer.py server --port P --tag T [--slow-ms MS]
      The Echo service of peer_common, framed binary, threaded; `ping()` answers after
      --slow-ms (a slow server for timeouts and circuit breaking). Logs one line per call.
  policy_peer.py client --port P --call echo:MSG --call add:A:B --call ping ...
      ONE connection, the calls in order; per call one line
      `CALL <i> OK <value> ms=<elapsed>` or `CALL <i> ERR <exception> type=<T> message=<M> ms=<elapsed>`,
      then `DONE`. A TApplicationException leaves the connection usable, so the script goes on.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.protocol import TBinaryProtocol  # noqa: E402
from thrift.server import TServer  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402

from peer_common import Handler, log_line  # noqa: E402


class SlowHandler(Handler):
    """peer_common's Echo service; `ping` waits, and every call is logged with the tag."""

    def __init__(self, tag, slow_ms):
        super().__init__(
            tag,
            lambda why: EchoError(why=why, code=42),
            lambda why: TApplicationException(TApplicationException.INTERNAL_ERROR, why),
        )
        self.slow_ms = slow_ms

    def echo(self, msg):
        log_line(f"server {self.tag} <- echo({msg})")
        return super().echo(msg)

    def add(self, a, b):
        log_line(f"server {self.tag} <- add")
        return super().add(a, b)

    def ping(self):
        log_line(f"server {self.tag} <- ping")
        time.sleep(self.slow_ms / 1000.0)
        return None


def loopback(p, host):
    if host not in ("127.0.0.1", "localhost", "::1"):
        p.error("peers bind and connect to loopback only")


def serve(args):
    handler = SlowHandler(args.tag, args.slow_ms)
    sock = TSocket.TServerSocket(host=args.host, port=args.port)
    server = TServer.TThreadedServer(
        Echo.Processor(handler), sock, TTransport.TFramedTransportFactory(),
        TBinaryProtocol.TBinaryProtocolFactory(), daemon=True)
    # Same readiness line as py_server: the harness waits for the port.
    print(f"policy_peer server {args.tag} listening on {args.host}:{args.port}", flush=True)
    server.serve()


def run_client(args):
    sock = TSocket.TSocket(args.host, args.port)
    sock.setTimeout(10000)
    transport = TTransport.TFramedTransport(sock)
    client = Echo.Client(TBinaryProtocol.TBinaryProtocol(transport))
    transport.open()
    try:
        for i, call in enumerate(args.call):
            name, *params = call.split(":")
            start = time.monotonic()
            try:
                if name == "echo":
                    value = client.echo(params[0] if params else "")
                elif name == "add":
                    value = client.add(int(params[0]), int(params[1]))
                elif name == "ping":
                    value = client.ping()
                else:
                    raise SystemExit(f"unknown call {call}")
                ms = (time.monotonic() - start) * 1000
                print(f"CALL {i} OK {value} ms={ms:.0f}", flush=True)
            except TApplicationException as e:
                ms = (time.monotonic() - start) * 1000
                message = (e.message or "").replace("\n", " ")
                print(f"CALL {i} ERR TApplicationException type={e.type} message={message} ms={ms:.0f}",
                      flush=True)
        print("DONE", flush=True)
    finally:
        transport.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", choices=("server", "client"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tag", default="")
    p.add_argument("--slow-ms", type=int, default=1000)
    p.add_argument("--call", action="append", default=[])
    args = p.parse_args()
    loopback(p, args.host)
    if args.role == "server":
        serve(args)
    else:
        run_client(args)


if __name__ == "__main__":
    main()

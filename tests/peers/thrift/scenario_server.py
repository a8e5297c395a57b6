#!/usr/bin/env python3
"""Echo server on Apache Thrift (PyPI `thrift`), THeader transport, for the routing scenarios:
the `py_server.py` service, plus one stdout line per call it answers
(`SEEN <method> <arg> h=<sorted info headers>`), so that a test can count what reached this
server (mirror copies) and see the headers a proxy added (request mutation)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.protocol import THeaderProtocol  # noqa: E402
from thrift.server import TServer  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.transport import THeaderTransport, TSocket, TTransport  # noqa: E402

from peer_common import Handler, log_line, parse_args  # noqa: E402
from py_server import CallContext  # noqa: E402


class SeenHandler(Handler):
    def seen(self, method, arg):
        headers = ",".join(sorted(
            f"{k.decode() if isinstance(k, bytes) else k}={v.decode() if isinstance(v, bytes) else v}"
            for k, v in self.info_headers().items()))
        log_line(f"SEEN {method} {arg} h={headers}")

    def echo(self, msg):
        self.seen("echo", msg)
        return super().echo(msg)

    def add(self, a, b):
        self.seen("add", a)
        return super().add(a, b)

    def inspect(self):
        self.seen("inspect", "")
        return super().inspect()


def main():
    args = parse_args("server", transports=("header",))
    handler = SeenHandler(
        args.tag,
        lambda why: EchoError(why=why, code=42),
        lambda why: TApplicationException(TApplicationException.INTERNAL_ERROR, why),
    )
    processor = CallContext(Echo.Processor(handler))
    handler.info_headers = processor.info_headers
    sub = (THeaderTransport.THeaderSubprotocolID.COMPACT if args.protocol == "compact"
           else THeaderTransport.THeaderSubprotocolID.BINARY)
    server = TServer.TThreadedServer(
        processor, TSocket.TServerSocket(host=args.host, port=args.port),
        TTransport.TTransportFactoryBase(), THeaderProtocol.THeaderProtocolFactory(default_protocol=sub),
        daemon=True)
    print(f"scenario_server listening on {args.host}:{args.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()

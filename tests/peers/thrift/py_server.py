#!/usr/bin/env python3
"""Echo server on Apache Thrift (PyPI `thrift`): buffered/framed/header x binary/compact."""

import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen-py"))

from echo import Echo  # noqa: E402
from echo.ttypes import EchoError  # noqa: E402
from thrift.protocol import TBinaryProtocol, TCompactProtocol, THeaderProtocol  # noqa: E402
from thrift.server import TServer  # noqa: E402
from thrift.Thrift import TApplicationException  # noqa: E402
from thrift.TMultiplexedProcessor import TMultiplexedProcessor  # noqa: E402
from thrift.transport import THeaderTransport, TSocket, TTransport  # noqa: E402

from peer_common import Handler, parse_args  # noqa: E402


class CallContext:
    """Remembers, per server thread, the input protocol of the call being processed, so the
    handler can read the THeader info headers of that call (`inspect`)."""

    def __init__(self, inner):
        self.inner, self.local = inner, threading.local()

    def process(self, iprot, oprot):
        self.local.iprot = iprot
        return self.inner.process(iprot, oprot)

    def info_headers(self):
        trans = getattr(getattr(self.local, "iprot", None), "trans", None)
        return dict(trans.get_headers()) if hasattr(trans, "get_headers") else {}


def main():
    args = parse_args("server")
    handler = Handler(
        args.tag,
        lambda why: EchoError(why=why, code=42),
        lambda why: TApplicationException(TApplicationException.INTERNAL_ERROR, why),
    )
    processor = Echo.Processor(handler)
    if args.multiplex:
        mux = TMultiplexedProcessor()
        mux.registerProcessor(args.multiplex, processor)
        processor = mux
    processor = CallContext(processor)
    handler.info_headers = processor.info_headers
    sock = TSocket.TServerSocket(host=args.host, port=args.port)
    if args.transport == "header":
        sub = (THeaderTransport.THeaderSubprotocolID.COMPACT if args.protocol == "compact"
               else THeaderTransport.THeaderSubprotocolID.BINARY)
        tfactory = TTransport.TTransportFactoryBase()
        pfactory = THeaderProtocol.THeaderProtocolFactory(default_protocol=sub)
    else:
        tfactory = (TTransport.TFramedTransportFactory() if args.transport == "framed"
                    else TTransport.TBufferedTransportFactory())
        pfactory = (TCompactProtocol.TCompactProtocolFactory() if args.protocol == "compact"
                    else TBinaryProtocol.TBinaryProtocolFactory())
    server = TServer.TThreadedServer(processor, sock, tfactory, pfactory, daemon=True)
    print(f"py_server listening on {args.host}:{args.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()

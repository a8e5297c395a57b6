#!/usr/bin/env python3
"""Echo server on thriftpy2 (an independent implementation): buffered/framed x binary/compact."""

import os

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.server import TThreadedServer
from thriftpy2.thrift import TApplicationException, TMultiplexedProcessor, TProcessor
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory, TServerSocket

from peer_common import Handler, parse_args

echo_thrift = thriftpy2.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo.thrift"),
                             module_name="echo_thrift")


def main():
    args = parse_args("server", transports=("buffered", "framed"))
    handler = Handler(
        args.tag,
        lambda why: echo_thrift.EchoError(why=why, code=42),
        lambda why: TApplicationException(TApplicationException.INTERNAL_ERROR, why),
    )
    processor = TProcessor(echo_thrift.Echo, handler)
    if args.multiplex:
        mux = TMultiplexedProcessor()
        mux.register_processor(args.multiplex, processor)
        processor = mux
    server = TThreadedServer(
        processor,
        TServerSocket(host=args.host, port=args.port),
        iprot_factory=TCompactProtocolFactory() if args.protocol == "compact" else TBinaryProtocolFactory(strict_read=False),
        itrans_factory=TFramedTransportFactory() if args.transport == "framed" else TBufferedTransportFactory(),
        daemon=True,
    )
    print(f"tp2_server listening on {args.host}:{args.port}", flush=True)
    server.serve()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Echo client on thriftpy2 (an independent implementation): buffered/framed x binary/compact."""

import os

import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory, TMultiplexedProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory

from peer_common import parse_args, run_e2e, run_full, show_inspect

echo_thrift = thriftpy2.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo.thrift"),
                             module_name="echo_thrift")


def main():
    args = parse_args("client", transports=("buffered", "framed"))
    if args.header:
        raise SystemExit("thriftpy2 has no THeader transport")
    proto = TCompactProtocolFactory() if args.protocol == "compact" else TBinaryProtocolFactory(
        strict_write=not args.non_strict, strict_read=False)
    if args.multiplex:
        proto = TMultiplexedProtocolFactory(proto, args.multiplex)
    client = make_client(
        echo_thrift.Echo,
        host=args.host,
        port=args.port,
        proto_factory=proto,
        trans_factory=TFramedTransportFactory() if args.transport == "framed" else TBufferedTransportFactory(),
        timeout=10000,
    )
    try:
        if args.scenario == "echo":
            try:
                print("echo", client.echo(args.msg))
            except TApplicationException as e:
                print(f"TApplicationException type={e.type} message={e.message}")
        elif args.scenario == "e2e":
            run_e2e(client, echo_thrift.Item, echo_thrift.Inner, echo_thrift.EchoError, TApplicationException,
                    args.msg)
        elif args.scenario == "inspect":
            print(show_inspect(client.inspect()))
        elif args.scenario == "route":
            raise SystemExit("the route scenario needs THeader: use py_client.py")
        else:
            run_full(client, echo_thrift.Item, echo_thrift.Inner, echo_thrift.EchoError, TApplicationException,
                     args.msg)
    finally:
        client.close()


if __name__ == "__main__":
    main()

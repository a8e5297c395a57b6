#!/usr/bin/env python3
"""Run every real client against every real server directly and through a recording relay, and
write the bytes to codecs/thrift/tests/vectors/<impl>_<transport>_<protocol>[_variant].{req,resp}.bin.

Checks along the way that each client gets the expected answers from each server, so this is
also the peers' direct (Envoy-free) interoperability check. Run install.sh first.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

from relay import Relay

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.normpath(os.path.join(HERE, "..", "..", "..", "codecs", "thrift", "tests", "vectors"))

EXPECTED = [
    "echo {tag}hello", "add -3", "blob ff0201", "fail EchoError boom", "fail TApplicationException 6",
    "notify sent", "mirror ok", "ping None",
]

# (client impl, server impl, transport, protocol, extra client args, extra server args, variant)
CASES = []
for t in ("buffered", "framed", "header"):
    for p in ("binary", "compact"):
        CASES.append(("py", "py", t, p, [], [], ""))
for t in ("buffered", "framed"):
    for p in ("binary", "compact"):
        CASES.append(("tp2", "tp2", t, p, [], [], ""))
        # Cross-implementation: Apache client against thriftpy2 server.
        CASES.append(("py", "tp2", t, p, [], [], "xsrv"))
CASES += [
    ("py", "py", "header", "compact", ["--header", "x-version=v2", "--header", "tenant=blue"], [], "kv"),
    ("py", "py", "framed", "binary", ["--multiplex", "Echo"], ["--multiplex", "Echo"], "mux"),
    ("py", "py", "header", "binary", ["--multiplex", "Echo"], ["--multiplex", "Echo"], "mux"),
    ("py", "py", "buffered", "binary", ["--non-strict"], [], "nonstrict"),
    ("tp2", "tp2", "framed", "binary", ["--non-strict"], [], "nonstrict"),
    ("tp2", "tp2", "buffered", "compact", ["--multiplex", "Echo"], ["--multiplex", "Echo"], "mux"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def run_client(impl, port, transport, protocol, extra):
    cmd = [sys.executable, os.path.join(HERE, f"{impl}_client.py"), "--transport", transport, "--protocol", protocol,
           "--host", "127.0.0.1", "--port", str(port)] + extra
    out = subprocess.run(cmd, capture_output=True, timeout=60, cwd=HERE)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout.decode()}{out.stderr.decode()}")
    return out.stdout.decode().splitlines()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", action="store_true", help="only check interoperability")
    args = ap.parse_args()
    os.makedirs(VECTORS, exist_ok=True)
    failures = 0
    for client, server, transport, protocol, cargs, sargs, variant in CASES:
        name = "_".join(x for x in (client, transport, protocol, variant) if x)
        port = free_port()
        tag = "v1"
        srv = subprocess.Popen(
            [sys.executable, os.path.join(HERE, f"{server}_server.py"), "--transport", transport, "--protocol",
             protocol, "--host", "127.0.0.1", "--port", str(port), "--tag", tag] + sargs,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE)
        try:
            wait_port(port, srv)
            want = [e.format(tag=tag + ":") for e in EXPECTED]
            direct = run_client(client, port, transport, protocol, cargs)
            relay = Relay(port)
            relayed = run_client(client, relay.port, transport, protocol, cargs)
            relay.wait()
            relay.close()
            ok = direct == want and relayed == want
            print(f"{'ok  ' if ok else 'FAIL'} {client} client -> {server} server {transport}/{protocol} {variant}")
            if not ok:
                failures += 1
                print("   want", want, "\n   direct", direct, "\n   relayed", relayed)
                continue
            if not args.no_write:
                req, resp = relay.captured[0]
                with open(os.path.join(VECTORS, name + ".req.bin"), "wb") as f:
                    f.write(bytes(req))
                with open(os.path.join(VECTORS, name + ".resp.bin"), "wb") as f:
                    f.write(bytes(resp))
        finally:
            srv.kill()
            srv.wait()
    print(f"{len(CASES) - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""A stand-in provider that answers every request with a canned error frame.

    python3 error_provider.py --port 21999 --frame route_not_found.bin

The frame (made by the codec: `cargo run -p meltemi-dubbo --example reply_frames -- DIR`) is sent
with each request's id patched in; heartbeats get a heartbeat reply. Used to check that real
consumers turn the codec's error replies into RPC errors. Binds 127.0.0.1 only.
"""
import argparse
import socketserver
import struct


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--frame", required=True)
    a = ap.parse_args()
    template = open(a.frame, "rb").read()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            buf = b""
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 16:
                    (length,) = struct.unpack("!i", buf[12:16])
                    if len(buf) < 16 + length:
                        break
                    header, buf = buf[:16], buf[16 + length:]
                    flags, req_id = header[2], header[4:12]
                    if flags & 0x20:  # event
                        if flags & 0x40:
                            self.request.sendall(b"\xda\xbb\x22\x14" + req_id + b"\x00\x00\x00\x01N")
                        continue
                    if flags & 0x40:  # two-way
                        self.request.sendall(template[:4] + req_id + template[12:])

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server(("127.0.0.1", a.port), Handler) as s:
        print("error provider on 127.0.0.1:%d with %s" % (a.port, a.frame), flush=True)
        s.serve_forever()


if __name__ == "__main__":
    main()

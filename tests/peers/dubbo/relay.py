"""A loopback TCP relay that records both directions of every connection it carries.

    python3 relay.py --listen 21990 --target 21881 --out /path/prefix

The n-th connection that carries bytes goes to PREFIX.c2s.bin / PREFIX.s2c.bin (n = 0) or
PREFIX-n.c2s.bin / ... (n > 0); connections that carry nothing (port probes) leave no file. Used to capture real consumer requests and provider responses as test vectors.
Stops on SIGTERM/SIGINT, or after --max-seconds.
"""
import argparse
import asyncio
import signal


async def pipe(reader, writer, sink):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            sink.write(data)
            sink.flush()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a dead socket
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seconds", type=float, default=300)
    a = ap.parse_args()
    count = 0

    class Sink:
        """Files are opened on the first byte, so probe connections leave no empty files."""

        def __init__(self):
            self.files = None

        def write(self, direction, data):
            nonlocal count
            if self.files is None:
                n, count = count, count + 1
                prefix = a.out if n == 0 else "%s-%d" % (a.out, n)
                self.files = {d: open("%s.%s.bin" % (prefix, d), "wb") for d in ("c2s", "s2c")}
            self.files[direction].write(data)
            self.files[direction].flush()

        def close(self):
            for f in (self.files or {}).values():
                f.close()

    class Direction:
        def __init__(self, sink, name):
            self.sink, self.name = sink, name

        def write(self, data):
            self.sink.write(self.name, data)

        def flush(self):
            pass

    async def handle(creader, cwriter):
        sreader, swriter = await asyncio.open_connection("127.0.0.1", a.target)
        sink = Sink()
        try:
            await asyncio.gather(pipe(creader, swriter, Direction(sink, "c2s")),
                                 pipe(sreader, cwriter, Direction(sink, "s2c")))
        finally:
            sink.close()

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("relay 127.0.0.1:%d -> 127.0.0.1:%d recording to %s" % (a.listen, a.target, a.out), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), a.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()


if __name__ == "__main__":
    asyncio.run(main())

"""A tiny loopback TCP relay that records both directions of every connection it carries.

Used to capture real client/server bytes as test vectors: point a client at the relay, the relay
at the server, and read `Relay.captured` (one (client_bytes, server_bytes) pair per connection).
"""

import socket
import threading


class Relay:
    def __init__(self, upstream_port, host="127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.captured = []
        self._threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream, timeout=10)
            record = [bytearray(), bytearray()]
            self.captured.append(record)
            for src, dst, buf in ((down, up, record[0]), (up, down, record[1])):
                t = threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def wait(self, timeout=10):
        for t in self._threads:
            t.join(timeout)

    def close(self):
        self.listener.close()

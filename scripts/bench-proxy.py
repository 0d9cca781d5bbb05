#!/usr/bin/env python3
"""Proxy-mode figures for BENCHMARKS.md, on this machine and on loopback:

1. what the proxy adds to a forwarded Sync: p50/p99 of N keep-alive round trips straight to a
   stand-in upstream and through a release ping-frontend in front of it, in the same run;
2. the frontend's RSS while a 20 MB ItemOperations answer streams through it.

Usage: cargo build --release -p ping-frontend && python3 scripts/bench-proxy.py [N]
Needs the local PostgreSQL, Redis and NATS (scripts/setup.sh starts them). Stops what it starts.
"""
import http.server
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
BIG = 20_000_000
# A Sync answer of one collection (Status 1), as the stand-in tests send.
SYNC = bytes.fromhex("03016a00455c4f4b036b2d6e65787400015203696e626f7800014e0331000101010101")


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in separate writes: without this, Nagle and delayed ACKs add 40 ms.
    disable_nagle_algorithm = True

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        left = length
        while left:
            left -= len(self.rfile.read(min(left, 65536)))
        if "ItemOperations" in self.path:
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            piece = bytes(range(256)) * 256
            sent = 0
            while sent < BIG:
                n = min(len(piece), BIG - sent)
                self.wfile.write(piece[:n])
                sent += n
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.ms-sync.wbxml")
        self.send_header("Content-Length", str(len(SYNC)))
        self.end_headers()
        self.wfile.write(SYNC)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(path, body=b""):
    return (
        f"POST /Microsoft-Server-ActiveSync?{path} HTTP/1.1\r\nHost: b\r\n"
        "Authorization: Basic YmVuY2g6cHc=\r\nMS-ASProtocolVersion: 14.1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def read_answer(sock, buf):
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    got = len(rest)
    while got < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise IOError("closed")
        got += len(chunk)
        rest += chunk if got <= 65536 else b""
    return head, b""


def round_trips(port, n):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    query = "Cmd=Sync&User=bench&DeviceId=bench1&DeviceType=t"
    body = bytes.fromhex("03016a00455c4f4b03300001520369620001010101")
    msg = request(query, body)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        sock.sendall(msg)
        read_answer(sock, b"")
        times.append((time.perf_counter() - t) * 1e3)
    sock.close()
    return times


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    up_port, fe_port, admin_port = free_port(), free_port(), free_port()
    server = Server(("127.0.0.1", up_port), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        UPSTREAM_URL=f"http://127.0.0.1:{up_port}/Microsoft-Server-ActiveSync",
        LISTEN_ADDR=f"127.0.0.1:{fe_port}",
        ADMIN_ADDR=f"127.0.0.1:{admin_port}",
        DP_NAMESPACE=f"bench{os.getpid()}",
        POD_NAME="bench",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
        RUST_LOG="warn",
    )
    frontend = subprocess.Popen(["target/release/ping-frontend"], env=env)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", fe_port)).close()
                break
            except OSError:
                time.sleep(0.05)
        round_trips(up_port, 200)  # warm both paths
        round_trips(fe_port, 200)
        direct, proxied = [], []
        for _ in range(3):  # interleaved, so drift hits both alike
            direct += round_trips(up_port, N // 3)
            proxied += round_trips(fe_port, N // 3)
        print(f"Sync round trips, {len(direct)} each, keep-alive, loopback:")
        for name, t in (("direct", direct), ("through the proxy", proxied)):
            print(f"  {name:18} p50 {pct(t, .5):.3f} ms  p99 {pct(t, .99):.3f} ms")
        print(
            f"  added              p50 {pct(proxied, .5) - pct(direct, .5):.3f} ms  "
            f"p99 {pct(proxied, .99) - pct(direct, .99):.3f} ms"
        )
        # Three transfers: the first also pays for memory every later one reuses (allocator
        # arenas of the worker threads, the pool's connection); the later ones show the cost
        # per transfer.
        for attempt in range(3):
            before = rss_kib(frontend.pid)
            peak = [before]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak.append(rss_kib(frontend.pid))
                    time.sleep(0.002)

            sampler = threading.Thread(target=sample)
            sampler.start()
            sock = socket.create_connection(("127.0.0.1", fe_port))
            t = time.perf_counter()
            sock.sendall(request("Cmd=ItemOperations&User=bench&DeviceId=bench1&DeviceType=t"))
            head, _ = read_answer(sock, b"")
            elapsed = time.perf_counter() - t
            done.set()
            sampler.join()
            sock.close()
            status = head.split(b"\r\n")[0].decode()
            print(
                f"20 MB ItemOperations answer #{attempt + 1} ({status}) in {elapsed:.3f} s: "
                f"frontend RSS {before} KiB before, peak {max(peak)} KiB (+{max(peak) - before} KiB)"
            )
    finally:
        frontend.terminate()
        frontend.wait()
        server.shutdown()


if __name__ == "__main__":
    main()

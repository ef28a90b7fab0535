#!/usr/bin/env python3
"""Which HTTP server goes inside `serve` (not a test): start-up import time, RSS and a simple request rate
of the candidates, each in a fresh process, in the same run.

    python bench/bench_http_choice.py [--python VENV/bin/python] [-n 4000] [--clients 8] [--rounds 3]

The candidates (each must be importable by --python; a missing one is reported and skipped):
  * starlette + uvicorn `Server.serve()` (h11, the pure-Python parser: what `pip install uvicorn` gives),
  * starlette + uvicorn with httptools,
  * fastapi (pydantic) + uvicorn with h11,
  * aiohttp `AppRunner` + `TCPSite`,
  * the baseline: a bare asyncio protocol answering the same bytes (no framework, no parser to speak of).
Each server answers GET /x with a small JSON body. The client is a separate process with `--clients`
keep-alive connections sending requests one after another on each connection (raw sockets, minimal
parsing, so the client costs little). Reported per candidate: import seconds (framework modules only),
RSS after import and after the requests (VmRSS/VmHWM), requests per second (best of --rounds), and the
ratio to the bare-asyncio baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

SERVER = r'''
import asyncio, os, socket, sys, time
kind = sys.argv[1]
t0 = time.perf_counter()
if kind.startswith("starlette"):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    import uvicorn
elif kind == "fastapi":
    from fastapi import FastAPI
    import uvicorn
elif kind == "aiohttp":
    from aiohttp import web
imports = time.perf_counter() - t0

def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out

after_import = rss()
BODY = b'{"ok":true,"n":42}'

async def main():
    # proto given: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP (socket.socket()'s is
    # 0, and a server answering in two writes then waits for the client's delayed ACK: 40 ms a request)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    if kind.startswith("starlette") or kind == "fastapi":
        if kind == "fastapi":
            app = FastAPI()
            @app.get("/x")
            async def x():
                return {"ok": True, "n": 42}
        else:
            async def x(request):
                return JSONResponse({"ok": True, "n": 42})
            app = Starlette(routes=[Route("/x", x)])
        cfg = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                             http="httptools" if kind.endswith("httptools") else "h11", loop="none")
        server = uvicorn.Server(cfg)
        server.install_signal_handlers = lambda: None  # older uvicorn
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        async def shutdown():
            server.should_exit = True
            await task
    elif kind == "aiohttp":
        async def x(request):
            return web.json_response({"ok": True, "n": 42})
        app = web.Application()
        app.router.add_get("/x", x)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        async def shutdown():
            await runner.cleanup()
    else:  # bare asyncio: the same answer without a framework
        RESP = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(BODY)) + BODY
        class P(asyncio.Protocol):
            def connection_made(self, t):
                self.t, self.buf = t, b""
            def data_received(self, d):
                self.buf += d
                while b"\r\n\r\n" in self.buf:
                    _, _, self.buf = self.buf.partition(b"\r\n\r\n")
                    self.t.write(RESP)
        server = await asyncio.get_running_loop().create_server(P, sock=sock)
        async def shutdown():
            server.close()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    out = {"imports": imports, "after_import": after_import, "end": rss()}
    await shutdown()
    print(__import__("json").dumps(out), flush=True)

asyncio.run(main())
'''


def client(port: int, n: int, q: mp.Queue) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n"
    buf = b""
    done = 0
    t0 = time.perf_counter()
    while done < n:
        s.sendall(req)
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                head = buf[:head_end].lower()
                i = head.find(b"content-length:")
                length = int(head[i + 15:].split(b"\r\n", 1)[0])
                if len(buf) >= head_end + 4 + length:
                    buf = buf[head_end + 4 + length:]
                    break
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("server closed")
            buf += chunk
        done += 1
    q.put(time.perf_counter() - t0)
    s.close()


def run(python: str, kind: str, n: int, clients: int) -> dict | None:
    p = subprocess.Popen([python, "-c", SERVER, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    line = p.stdout.readline()
    if not line.strip().isdigit():
        p.kill()
        err = p.stderr.read() if p.stderr else ""
        return {"error": (err.strip().splitlines() or ["did not start"])[-1]}
    port = int(line)
    q: mp.Queue = mp.Queue()
    per = n // clients
    procs = [mp.Process(target=client, args=(port, per, q)) for _ in range(clients)]
    t0 = time.perf_counter()
    for c in procs:
        c.start()
    for c in procs:
        c.join()
    wall = time.perf_counter() - t0
    p.stdin.write("\n")
    p.stdin.flush()
    out = json.loads(p.stdout.readline())
    p.wait(10)
    out["rps"] = per * clients / wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    kinds = ["bare-asyncio", "starlette-h11", "starlette-httptools", "fastapi", "aiohttp"]
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for kind in kinds:  # interleaved, so drift on a shared machine hits every candidate alike
            r = run(args.python, kind, args.n, args.clients)
            if r is None:
                continue
            if "error" in r:
                best[kind] = r
                continue
            b = best.get(kind)
            if b is None or "error" in b:
                best[kind] = r
            else:
                b["rps"] = max(b["rps"], r["rps"])
                b["imports"] = min(b["imports"], r["imports"])
    base = best.get("bare-asyncio", {}).get("rps")
    print(f"{'candidate':<22} {'import s':>8} {'RSS import MiB':>15} {'RSS end MiB':>12} {'peak MiB':>9} "
          f"{'req/s':>8} {'vs bare':>8}")
    for kind in kinds:
        r = best.get(kind)
        if r is None:
            continue
        if "error" in r:
            print(f"{kind:<22} unavailable: {r['error']}")
            continue
        ratio = f"{r['rps'] / base:.2f}" if base else "-"
        print(f"{kind:<22} {r['imports']:>8.3f} {r['after_import']['VmRSS']:>15.1f} {r['end']['VmRSS']:>12.1f} "
              f"{r['end']['VmHWM']:>9.1f} {r['rps']:>8.0f} {ratio:>8}")
    print(f"(n={args.n} requests over {args.clients} keep-alive connections, best of {args.rounds}; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()

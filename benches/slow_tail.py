#!/usr/bin/env python3
"""benches/slow_tail.py - an HTTP/1.1 upstream with a slow tail, for benches/hedge.sh.

    python3 benches/slow_tail.py --port PORT [--slow-share 0.05] [--slow-ms 200] [--fast-ms 2]

Answers every request 200 "ok\\n" on keep-alive connections: SLOW_SHARE of them
(drawn at random, per request) after SLOW_MS, the rest after FAST_MS, as a
service whose requests now and then hit a pause (a GC, a cold cache, a slow
disk) does. `GET /__count` answers the number of other requests seen so far,
so the bench can tell the load the hedges added. Prints "listening
HOST:PORT" once bound. Python stdlib only (asyncio).
"""

import argparse
import asyncio
import random
import sys

seen = 0


async def serve(reader, writer, args):
    global seen
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            if b" /__count " in line:
                body = f"{seen}\n".encode()
            else:
                seen += 1
                slow = random.random() < args.slow_share
                await asyncio.sleep((args.slow_ms if slow else args.fast_ms) / 1000)
                body = b"ok\n"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--slow-share", type=float, default=0.05)
    ap.add_argument("--slow-ms", type=float, default=200)
    ap.add_argument("--fast-ms", type=float, default=2)
    args = ap.parse_args()
    server = await asyncio.start_server(lambda r, w: serve(r, w, args), args.host, args.port, backlog=4096)
    print(f"listening {args.host}:{args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)

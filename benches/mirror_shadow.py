#!/usr/bin/env python3
"""benches/mirror_shadow.py - a shadow that hangs, for benches/mirror.sh.

    python3 benches/mirror_shadow.py --port PORT [--host 127.0.0.1]

Accepts every connection, reads and drops whatever is sent, and never answers:
a shadow that has stopped responding but whose kernel still accepts. A
connection stays open until the peer closes it (its timeout). Prints
"listening HOST:PORT" once bound; on SIGTERM it prints one line of counts
(accepted, peak open, open now) and exits. Python stdlib only, one thread
(selectors), so thousands of idle connections cost it no threads.
"""

import argparse
import resource
import selectors
import signal
import socket
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backlog", type=int, default=4096)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(args.backlog)
    lsock.setblocking(False)

    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    stats = {"accepted": 0, "open": 0, "peak": 0}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    print(f"listening {args.host}:{args.port}", flush=True)

    while not stopping:
        for key, _ in sel.select(timeout=0.5):
            if key.data is None:  # the listener
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # out of fds: leave it in the backlog
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    stats["accepted"] += 1
                    stats["open"] += 1
                    stats["peak"] = max(stats["peak"], stats["open"])
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:  # the peer gave up: close our side too
                sel.unregister(conn)
                conn.close()
                stats["open"] -= 1
    print(f"accepted {stats['accepted']} peak_open {stats['peak']} open {stats['open']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

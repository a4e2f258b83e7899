#!/usr/bin/env python3
"""A local S3 server for maskflow's tests and benchmarks: moto's, on 127.0.0.1 at a free port.

Prints `http://127.0.0.1:PORT` on its first line once it answers, creates the buckets named on the
command line, and stops by itself: when its parent process ends, when stdin closes (if --stdin),
on SIGTERM/SIGINT, or after --max-seconds (default 3600). It only ever listens on loopback.

    scripts/s3-server.py [--max-seconds N] BUCKET...
"""
import argparse
import logging
import os
import signal
import sys
import threading
import time
import urllib.request

from moto.server import ThreadedMotoServer


def main():
    # One line per request would bury the test output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser()
    ap.add_argument("buckets", nargs="*")
    ap.add_argument("--max-seconds", type=float, default=3600)
    args = ap.parse_args()

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port
    endpoint = f"http://127.0.0.1:{port}"
    for b in args.buckets:
        req = urllib.request.Request(f"{endpoint}/{b}", method="PUT")
        urllib.request.urlopen(req, timeout=10).read()
    print(endpoint, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()
    deadline = time.monotonic() + args.max_seconds
    while not stop.is_set() and time.monotonic() < deadline:
        if os.getppid() != parent:
            break  # the process that started us is gone
        stop.wait(0.5)
    server.stop()


if __name__ == "__main__":
    sys.exit(main())

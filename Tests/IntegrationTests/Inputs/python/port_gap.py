"""Connects to HOST:PORT every 2 ms until STOP_FILE appears; prints one JSON line: the attempts,
the refused ones, the longest stretch (ms) from a refused connection to the next accepted one,
which is how long the port had no listener while a server handed it over, and the connections
that got no answer within 1 s (Linux may drop a SYN that meets a listener as it closes; the client
sends it again after a second).

    port_gap.py HOST PORT STOP_FILE
"""
import json
import os
import socket
import sys
import time

host, port, stop_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
attempts, refused, timed_out, longest, first_refused = 0, 0, 0, 0.0, None
while not os.path.exists(stop_file):
    attempts += 1
    now = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
        if first_refused is not None:
            longest = max(longest, (now - first_refused) * 1000)
            first_refused = None
    except socket.timeout:
        timed_out += 1
    except OSError:
        refused += 1
        if first_refused is None:
            first_refused = now
    time.sleep(0.002)
if first_refused is not None:
    longest = max(longest, (time.monotonic() - first_refused) * 1000)
print(json.dumps({"attempts": attempts, "refused": refused, "timed_out": timed_out, "longest_gap_ms": longest}), flush=True)

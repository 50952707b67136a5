"""A misbehaving HTTP/2 (h2c) server, frame by frame, for the sidecar's upstream side.

Usage: h2_bad_server.py CASE
  goaway-error   answers a request's HEADERS with GOAWAY(PROTOCOL_ERROR) naming the highest
                 stream ID (so no stream looks unprocessed) and keeps the connection open

Logs {"message": "listening", "address": ...} to stderr, like the other test servers.
"""
import json
import signal
import socket
import struct
import sys
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, SETTINGS, GOAWAY = 1, 4, 7
ACK = 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def goaway_error(conn):
    conn.sendall(frame(SETTINGS, 0, 0))
    buffer, held = b"", []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buffer += chunk
        if buffer.startswith(PREFACE):
            buffer = buffer[len(PREFACE):]
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            buffer = buffer[9 + length:]
            if kind == SETTINGS and not flags & ACK:
                conn.sendall(frame(SETTINGS, ACK, 0))
            if kind == HEADERS:
                conn.sendall(frame(GOAWAY, 0, 0, struct.pack(">II", 0x7FFFFFFF, 1)))
        held.append(conn)  # never closed by this side


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in {"goaway-error"}:
        sys.exit(__doc__)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    host, port = server.getsockname()
    print(json.dumps({"message": "listening", "address": f"{host}:{port}"}), file=sys.stderr,
          flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=goaway_error, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()

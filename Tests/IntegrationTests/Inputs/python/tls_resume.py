"""Two gRPC calls over TLS 1.3 with a client certificate, the second on a resumed session.

Usage: tls_resume.py HOST:PORT CA CERT KEY AUTHORITY PATH [--between COMMAND]

With --between, COMMAND runs (a shell command) after the first call and before the second: a
test changes the server's trust bundle there, say.

Each call is made with raw HTTP/2 frames (`hpack` for the headers). Prints one JSON line:
{"first": STATUS, "reused": BOOL, "second": STATUS} — a status is the call's grpc-status, or
"closed" when the connection ended without one.
"""
import json
import socket
import ssl
import struct
import subprocess
import sys

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def call(context, target, authority, path, session=None):
    host, port = target.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock = context.wrap_socket(raw, server_hostname=None, session=session)
    except (OSError, ssl.SSLError):
        raw.close()
        return "closed", None, False
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    headers = [(":method", "POST"), (":scheme", "https"), (":path", path),
               (":authority", authority), ("content-type", "application/grpc"),
               ("te", "trailers")]
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0)
                 + frame(HEADERS, END_HEADERS, 1, encoder.encode(headers))
                 + frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x02ok"))
    buffer, status = b"", "closed"
    try:
        while status == "closed":
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags = buffer[3], buffer[4]
                payload = buffer[9:9 + length]
                buffer = buffer[9 + length:]
                if kind == SETTINGS and not flags & ACK:
                    sock.sendall(frame(SETTINGS, ACK, 0))
                if kind == HEADERS:
                    fields = dict(decoder.decode(payload))
                    if "grpc-status" in fields:
                        status = fields["grpc-status"]
    except (OSError, ssl.SSLError):
        pass
    result = (status, sock.session, sock.session_reused)
    sock.close()
    return result


def main():
    between = None
    if len(sys.argv) == 9 and sys.argv[7] == "--between":
        between = sys.argv[8]
    elif len(sys.argv) != 7:
        sys.exit(__doc__)
    target, ca, cert, key, authority, path = sys.argv[1:7]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    first, session, _ = call(context, target, authority, path)
    if between:
        subprocess.run(between, shell=True, check=True)
    second, _, reused = call(context, target, authority, path, session=session)
    print(json.dumps({"first": first, "reused": reused, "second": second}), flush=True)


if __name__ == "__main__":
    main()

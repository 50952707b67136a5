"""A Python grpcio server for trellis.echo.v1.Echo with server reflection (grpcio-reflection).

Usage: echo_server.py STUB_DIR ECHO_PROTO_DIR [--tls CERT KEY [--client-ca CA]]
Listens on a free loopback port and logs {"message": "listening", "address": ...} to stderr.
With --tls it serves TLS with that certificate; with --client-ca it also requires a client
certificate signed by that CA.
"""
import json
import signal
import sys
from concurrent import futures

import grpc
from grpc_reflection.v1alpha import reflection

from codegen import generate

generate(sys.argv[1], [sys.argv[2]], ["echo.proto"])
options = sys.argv[3:]
import echo_pb2  # noqa: E402
import echo_pb2_grpc  # noqa: E402


def headers(context):
    return {k: (v if isinstance(v, str) else v.hex()) for k, v in context.invocation_metadata()}


def seen(method):
    """Logs each call the app receives, so tests can count what reached it."""
    print(json.dumps({"message": "call", "method": method}), file=sys.stderr, flush=True)


class Echo(echo_pb2_grpc.EchoServicer):
    def Say(self, request, context):
        seen("Say")
        if request.fail_with_code:
            code = next(c for c in grpc.StatusCode if c.value[0] == request.fail_with_code)
            context.abort(code, f"failing as asked: {request.text}")
        response = echo_pb2.EchoResponse(text=request.text, headers=headers(context))
        response.at.FromSeconds(1700000000)
        return response

    def Expand(self, request, context):
        seen("Expand")
        for i in range(request.repeat):
            yield echo_pb2.EchoResponse(text=f"{request.text} {i}", index=i)

    def Collect(self, request_iterator, context):
        seen("Collect")
        texts = [r.text for r in request_iterator]
        return echo_pb2.EchoResponse(text=" ".join(texts), index=len(texts))

    def Chat(self, request_iterator, context):
        seen("Chat")
        for i, r in enumerate(request_iterator):
            yield echo_pb2.EchoResponse(text=r.text.upper(), index=i)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    echo_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    names = (echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    if options[:1] == ["--tls"]:
        cert, key = open(options[1], "rb").read(), open(options[2], "rb").read()
        client_ca = open(options[4], "rb").read() if options[3:4] == ["--client-ca"] else None
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    # A test runner may start us with SIGTERM blocked (the mask is inherited); take it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    print(json.dumps({"message": "listening", "address": f"127.0.0.1:{port}"}),
          file=sys.stderr, flush=True)
    # Waits in short steps so the SIGTERM handler gets to run.
    while server.wait_for_termination(timeout=0.2):  # True: timed out, still serving
        pass


if __name__ == "__main__":
    main()

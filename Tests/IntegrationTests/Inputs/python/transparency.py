"""The sidecar transparency suite, with grpcio on both ends.

  transparency.py serve
      Runs a grpcio (asyncio) server for the generic service `t.T` on a free loopback port and
      logs {"message": "listening", "address": ...} to stderr.
  transparency.py call MESH METHOD PAYLOAD
      One call through the mesh; prints {"code": ..., "details": ...}.
  transparency.py gather MESH N
      N calls on one connection that the server answers only once all N are in flight at
      once; prints {"ok": N, "failed": N}.
  transparency.py burst MESH N MILLIS
      N concurrent calls on one connection, each held MILLIS by the server; prints the count
      of each status code and the first message of each code other than OK.
  transparency.py load MESH SECONDS
      Calls back to back (a new connection every 20 calls); prints {"ok": N, "failed": N}.
  transparency.py check DIRECT MESH [PID ...]
      Runs every check twice — DIRECT to the server, and through the MESH (a sidecar's outbound
      listener, authority `echo`) — and requires the same observable result: messages, headers
      and trailers (text and binary), status codes and messages byte for byte, Trailers-Only
      answers, cancellation, flow control (the PIDs' memory stays bounded while a client reads
      slowly), 4 MiB messages, and 1,000 concurrent calls on one connection. Prints one line per
      check and exits non-zero on the first difference.

Methods are raw bytes (no codegen): what a message holds is up to each method.
"""
import asyncio
import json
import signal
import sys
import time

import grpc

MiB = 1 << 20
OPTIONS = [("grpc.max_receive_message_length", 16 * MiB),
           ("grpc.max_send_message_length", 16 * MiB)]
SERVICE = "t.T"
cancelled = set()
arrived = {"count": 0}
gate = {"event": None}


# ---------------------------------------------------------------- server

async def unary(request, context):
    echoed = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo")]
    await context.send_initial_metadata(echoed)
    context.set_trailing_metadata([("x-trailer", "done"), ("x-trailer-bin", b"\x00\xff\x10")])
    return request


async def fail(request, context):
    code = next(c for c in grpc.StatusCode if c.value[0] == request[0])
    await context.send_initial_metadata([("x-before", "failing")])
    await context.abort(code, "failed: \u00fcn\u00efcode 100% \t " + request[1:].decode())


async def trailers_only(request, context):
    context.set_trailing_metadata([("x-why", "refused early")])
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no body, no headers: 50% off")


async def server_stream(request, context):
    count, size = int.from_bytes(request[:4], "big"), int.from_bytes(request[4:8], "big")
    for i in range(count):
        yield i.to_bytes(4, "big") + b"x" * (size - 4)


async def client_stream(request_iterator, context):
    count = total = 0
    async for message in request_iterator:
        count += 1
        total += len(message)
    return count.to_bytes(4, "big") + total.to_bytes(8, "big")


async def bidi(request_iterator, context):
    async for message in request_iterator:
        yield message[::-1]


async def slow(request, context):
    key = request.decode()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.add(key)
        raise
    return b"late"


async def sleep(request, context):
    await asyncio.sleep(int(request.decode()) / 1000)
    return b"slept"


async def gathered(request, context):
    """Answers only once `request` calls are in flight at once (proves concurrency)."""
    want = int(request.decode())
    arrived["count"] += 1
    if gate["event"] is None:
        gate["event"] = asyncio.Event()
    if arrived["count"] >= want:
        gate["event"].set()
    await asyncio.wait_for(gate["event"].wait(), 20)
    return b"ok"


async def reset_gather(request, context):
    arrived["count"] = 0
    gate["event"] = None
    return b""


async def was_cancelled(request, context):
    return b"yes" if request.decode() in cancelled else b"no"


def handlers():
    u, ss = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    cs, bd = grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": u(unary), "Fail": u(fail), "TrailersOnly": u(trailers_only),
        "ServerStream": ss(server_stream), "ClientStream": cs(client_stream), "Bidi": bd(bidi),
        "Slow": u(slow), "Sleep": u(sleep), "Gathered": u(gathered), "ResetGather": u(reset_gather),
        "WasCancelled": u(was_cancelled),
    })


async def serve():
    server = grpc.aio.server(options=OPTIONS + [("grpc.max_concurrent_streams", 2000)])
    server.add_generic_rpc_handlers((handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"message": "listening", "address": f"127.0.0.1:{port}"}),
          file=sys.stderr, flush=True)
    await server.wait_for_termination()


# ---------------------------------------------------------------- client

class Difference(Exception):
    pass


def channel(target):
    # Through the mesh the authority names the service; direct it is the server's address.
    options = OPTIONS + ([("grpc.default_authority", "echo")] if target[1] else [])
    return grpc.aio.insecure_channel(target[0], options=options)


def method(ch, name, kind):
    path = f"/{SERVICE}/{name}"
    return getattr(ch, kind)(path)


async def observe(call):
    """What a caller can observe of a finished unary-response call."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return {"code": error.code().name, "details": error.details(),
                "initial": sorted(error.initial_metadata() or ()),
                "trailing": sorted(error.trailing_metadata() or ())}
    return {"code": "OK", "response": response,
            "initial": sorted(await call.initial_metadata()),
            "trailing": sorted(await call.trailing_metadata())}


async def check_unary(ch, _):
    metadata = [("x-echo-text", "a text value: spaces, = and %41 stay"),
                ("x-echo-bin", b"\x00\x01\xfe\xff"), ("x-echo-empty", "")]
    return await observe(method(ch, "Unary", "unary_unary")(b"\x00hello\xff", metadata=metadata))


async def check_statuses(ch, _):
    results = []
    for code in range(1, 17):
        results.append(await observe(method(ch, "Fail", "unary_unary")(bytes([code]) + b"x")))
    return results


async def check_trailers_only(ch, _):
    return await observe(method(ch, "TrailersOnly", "unary_unary")(b""))


async def check_streams(ch, _):
    stream = method(ch, "ServerStream", "unary_stream")(
        (100).to_bytes(4, "big") + (64).to_bytes(4, "big"))
    received = [m async for m in stream]
    collected = await method(ch, "ClientStream", "stream_unary")(
        iter([bytes([i]) * i for i in range(100)]))
    call = method(ch, "Bidi", "stream_stream")()
    answers = []
    for i in range(50):
        await call.write(f"ping {i}".encode())
        answers.append(await call.read())
    await call.done_writing()
    tail = await call.read()
    return {"server": [len(received), received[0], received[-1]],
            "client": collected, "bidi": answers, "end": tail is grpc.aio.EOF,
            "code": (await call.code()).name}


async def check_cancellation(ch, target):
    key = f"cancel-{target[1]}-{time.monotonic_ns()}"
    call = method(ch, "Slow", "unary_unary")(key.encode())
    await asyncio.sleep(0.3)
    call.cancel()
    for _ in range(50):
        answer = await method(ch, "WasCancelled", "unary_unary")(key.encode())
        if answer == b"yes":
            return {"server saw the cancellation": True}
        await asyncio.sleep(0.1)
    return {"server saw the cancellation": False}


async def check_deadline(ch, _):
    return await observe(method(ch, "Slow", "unary_unary")(b"deadline", timeout=0.3))


async def check_big_messages(ch, _):
    exact = b"m" * (4 * MiB)
    echoed = await method(ch, "Unary", "unary_unary")(exact)
    return {"4 MiB echoed": echoed == exact}


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def check_backpressure(ch, target):
    pids = target[2]
    before = [rss_kib(p) for p in pids]
    stream = method(ch, "ServerStream", "unary_stream")(
        (128).to_bytes(4, "big") + MiB.to_bytes(4, "big"))
    first = await stream.read()
    await asyncio.sleep(2)  # a slow reader: the server must be held back, not buffered for
    during = [rss_kib(p) for p in pids]
    count = 1
    while (await stream.read()) is not grpc.aio.EOF:
        count += 1
    growth = [d - b for b, d in zip(before, during)]
    if any(g > 48 * 1024 for g in growth):
        raise Difference(f"sidecar memory grew by {growth} KiB while the reader was slow")
    if pids:
        print(f"  sidecar memory growth while the reader was slow: {growth} KiB", flush=True)
    return {"messages": count, "first index": first[:4]}


async def check_concurrency(ch, _):
    await method(ch, "ResetGather", "unary_unary")(b"")
    calls = [method(ch, "Gathered", "unary_unary")(b"1000") for _ in range(1000)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if not isinstance(r, bytes)]
    return {"ok": len(results) - len(failures), "first failure": str(failures[:1])}


async def check_oversized(ch, _):
    """Mesh only: a message over 4 MiB either way is RESOURCE_EXHAUSTED, not forwarded."""
    request = await observe(method(ch, "Unary", "unary_unary")(b"m" * (4 * MiB + 1)))
    stream = method(ch, "ServerStream", "unary_stream")(
        (1).to_bytes(4, "big") + (4 * MiB + 1).to_bytes(4, "big"))
    try:
        async for _ in stream:
            pass
        response = {"code": "OK"}
    except grpc.aio.AioRpcError as error:
        response = {"code": error.code().name, "details": error.details()}
    expected = {
        "request": ("RESOURCE_EXHAUSTED",
                    "request message of 4194305 bytes exceeds the limit of 4194304 bytes"),
        "response": ("RESOURCE_EXHAUSTED",
                     "response message of 4194305 bytes exceeds the limit of 4194304 bytes"),
    }
    got = {"request": (request["code"], request.get("details")),
           "response": (response["code"], response.get("details"))}
    if got != expected:
        raise Difference(f"oversized messages: expected {expected}, got {got}")
    return got


MESH_ONLY = [("messages over 4 MiB are refused with RESOURCE_EXHAUSTED", check_oversized)]

CHECKS = [
    ("unary: message, text and binary headers, trailers", check_unary),
    ("every status code and its message, byte for byte", check_statuses),
    ("Trailers-Only answer", check_trailers_only),
    ("server, client and bidirectional streams", check_streams),
    ("cancellation reaches the server", check_cancellation),
    ("deadline", check_deadline),
    ("4 MiB messages", check_big_messages),
    ("backpressure: a slow reader holds the server back", check_backpressure),
    ("1,000 concurrent calls on one connection", check_concurrency),
]


async def check(direct, mesh, pids):
    for name, run in CHECKS:
        results = []
        for target in ((direct, False, []), (mesh, True, pids)):
            async with channel(target) as ch:
                results.append(await run(ch, target))
        if results[0] != results[1]:
            raise Difference(f"{name}:\n  direct: {results[0]!r}\n  mesh:   {results[1]!r}")
        print(f"same: {name}: {str(results[1])[:120]}", flush=True)
    for name, run in MESH_ONLY:
        async with channel((mesh, True, pids)) as ch:
            result = await run(ch, (mesh, True, pids))
        print(f"mesh: {name}: {str(result)[:160]}", flush=True)


async def call_once(target, name, payload):
    """Mode `call`: one unary call through the mesh; prints its status code."""
    async with channel((target, True, [])) as ch:
        result = await observe(method(ch, name, "unary_unary")(payload.encode()))
    print(json.dumps({"code": result["code"], "details": result.get("details")}), flush=True)


async def gather(target, count):
    """Mode `gather`: `count` calls that must all be in flight at once to be answered."""
    async with channel((target, True, [])) as ch:
        await method(ch, "ResetGather", "unary_unary")(b"")
        calls = [method(ch, "Gathered", "unary_unary")(str(count).encode())
                 for _ in range(count)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if not isinstance(r, bytes)]
    print(json.dumps({"ok": len(results) - len(failures), "failed": len(failures),
                      "first": str(failures[:1])}), flush=True)


async def burst(target, count, millis):
    """Mode `burst`: `count` calls in flight at once, each held `millis` by the server."""
    async with channel((target, True, [])) as ch:
        calls = [observe(method(ch, "Sleep", "unary_unary")(str(millis).encode()))
                 for _ in range(count)]
        results = await asyncio.gather(*calls)
    codes, details = {}, {}
    for result in results:
        codes[result["code"]] = codes.get(result["code"], 0) + 1
        if result["code"] != "OK":
            details.setdefault(result["code"], result["details"])
    print(json.dumps({"codes": codes, "details": details}), flush=True)


async def load(target, seconds):
    """Mode `load`: calls back to back for `seconds`, on a new connection every 20 calls, and
    prints how many succeeded and failed (with the first failure)."""
    ok, failed, first = 0, 0, None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        async with channel((target, True, [])) as ch:
            for _ in range(20):
                result = await observe(method(ch, "Unary", "unary_unary")(b"load"))
                if result["code"] == "OK":
                    ok += 1
                else:
                    failed += 1
                    first = first or result
    print(json.dumps({"ok": ok, "failed": failed, "first": str(first)}), flush=True)


def main():
    # A test runner may start us with SIGTERM blocked (the mask is inherited): restore it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve())
    elif sys.argv[1:2] == ["call"]:
        asyncio.run(call_once(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif sys.argv[1:2] == ["burst"]:
        asyncio.run(burst(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif sys.argv[1:2] == ["gather"]:
        asyncio.run(gather(sys.argv[2], int(sys.argv[3])))
    elif sys.argv[1:2] == ["load"]:
        asyncio.run(load(sys.argv[2], float(sys.argv[3])))
    elif sys.argv[1:2] == ["check"]:
        pids = [int(p) for p in sys.argv[4:]]
        try:
            asyncio.run(check(sys.argv[2], sys.argv[3], pids))
        except Difference as difference:
            print(f"DIFFERENT: {difference}", flush=True)
            sys.exit(1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

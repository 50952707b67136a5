"""Scripted peers for the resilience tests, with grpcio on both ends.

  resilience.py serve NAME LOG [--fail-all] [--delay MS] [--pushback MS]
      Runs a grpcio (asyncio) server for the service `r.R` on a free loopback port (or the
      address in $LISTEN) and logs {"message": "listening", "address": ...} to stderr. Every
      call it executes is appended to LOG as one JSON line {"server", "method", "key",
      "attempt", "remaining"} at once (flushed; "remaining" is the deadline grpcio read from
      grpc-timeout, in seconds), so executions are counted even if the server
      is killed. --fail-all answers every call UNAVAILABLE (after executing it), --delay adds
      MS to every call, --pushback sends grpc-retry-pushback-ms with each failure.
  resilience.py call MESH METHOD KEY [TIMEOUT [NAME=VALUE ...]]
      One call through the mesh (authority `r`) with those request headers (TIMEOUT "-" for
      none); prints {"code", "details", "server", "ms"}.
  resilience.py load MESH METHOD SECONDS CONCURRENCY [TIMEOUT [NAME=VALUE ...]]
      Calls back to back from CONCURRENCY tasks on one connection, each with a fresh key, for
      SECONDS (or, written nCOUNT, until COUNT calls are made);
      prints {"codes": {...}, "servers": {...}, "p50_ms", "p90_ms", "p99_ms", "mean_ms", "calls", "first_failure"},
      and with TIMELINE=1 in the environment every call as [start (Unix s), ms, code, server].

  resilience.py burst MESH METHOD N
      N calls at once on one connection; prints one {"code", "details", "ms"} per call, as a
      JSON list.

Methods (raw bytes; the request is a key):
  Get     answers the server's name.
  Create  answers the server's name (a non-idempotent method: the tests configure Get and
          Flaky idempotent, Create not).
  Flaky   KEY "name:n" fails UNAVAILABLE the first n times a key is seen on this server.
  Sleep   sleeps KEY milliseconds; a cancelled sleep is logged as method "cancelled".
  Headers answers the trace headers it received (traceparent, tracestate, b3, x-b3-*) as a
          JSON object.
"""
import asyncio
import json
import os
import signal
import sys
import time

import grpc

SERVICE = "r.R"
state = {"name": "", "log": None, "fail_all": False, "delay": 0, "pushback": None, "seen": {}}


def log_execution(method, key, context):
    metadata = dict(context.invocation_metadata())
    line = json.dumps({"server": state["name"], "method": method, "key": key,
                       "attempt": metadata.get("grpc-previous-rpc-attempts", "0"),
                       "remaining": context.time_remaining()})
    state["log"].write(line + "\n")
    state["log"].flush()


async def common(method, request, context):
    key = request.decode()
    log_execution(method, key, context)
    if state["delay"]:
        await asyncio.sleep(state["delay"] / 1000)
    if state["fail_all"]:
        if state["pushback"] is not None:
            context.set_trailing_metadata([("grpc-retry-pushback-ms", str(state["pushback"]))])
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{state['name']} fails every call")
    return key


async def get(request, context):
    await common("Get", request, context)
    return state["name"].encode()


async def create(request, context):
    await common("Create", request, context)
    return state["name"].encode()


async def flaky(request, context):
    key = await common("Flaky", request, context)
    name, _, count = key.partition(":")
    seen = state["seen"].get(name, 0)
    state["seen"][name] = seen + 1
    if seen < int(count or 0):
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{state['name']}: failure {seen + 1}")
    return state["name"].encode()


async def sleep(request, context):
    key = await common("Sleep", request, context)
    try:
        await asyncio.sleep(int(key) / 1000)
    except asyncio.CancelledError:
        log_execution("cancelled", key, context)
        raise
    return state["name"].encode()


TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")


async def headers(request, context):
    await common("Headers", request, context)
    seen = {k: v for k, v in context.invocation_metadata() if k in TRACE_HEADERS}
    return json.dumps(seen, sort_keys=True).encode()


async def serve():
    args = sys.argv[2:]
    state["name"], state["log"] = args[0], open(args[1], "a", buffering=1)
    state["fail_all"] = "--fail-all" in args
    if "--delay" in args:
        state["delay"] = int(args[args.index("--delay") + 1])
    if "--pushback" in args:
        state["pushback"] = int(args[args.index("--pushback") + 1])
    u = grpc.unary_unary_rpc_method_handler
    handlers = {"Get": u(get), "Create": u(create), "Flaky": u(flaky), "Sleep": u(sleep),
                "Headers": u(headers)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port(os.environ.get("LISTEN", "127.0.0.1:0"))
    await server.start()
    host = os.environ.get("LISTEN", "127.0.0.1:0").rsplit(":", 1)[0]
    print(json.dumps({"message": "listening", "address": f"{host}:{port}"}),
          file=sys.stderr, flush=True)
    await server.wait_for_termination()


async def one_call(ch, method, key, timeout, metadata=()):
    started = time.monotonic()
    call = ch.unary_unary(f"/{SERVICE}/{method}")(key.encode(), timeout=timeout,
                                                  metadata=metadata)
    try:
        answer = await call
        result = {"code": "OK", "details": "", "server": answer.decode()}
    except grpc.aio.AioRpcError as error:
        result = {"code": error.code().name, "details": error.details(), "server": ""}
    result["ms"] = (time.monotonic() - started) * 1000
    return result


def channel(target):
    return grpc.aio.insecure_channel(target, options=[("grpc.default_authority", "r"),
                                                      ("grpc.enable_retries", 0)])


async def call(target, method, key, timeout, metadata):
    async with channel(target) as ch:
        print(json.dumps(await one_call(ch, method, key, timeout, metadata)), flush=True)


async def load(target, method, seconds, concurrency, timeout, metadata):
    codes, servers, latencies, first, timeline = {}, {}, [], None, []
    total = int(seconds[1:]) if seconds.startswith("n") else None
    end = time.monotonic() + (float(seconds) if total is None else 3600)
    counter = {"n": 0}

    async def worker(ch, index):
        nonlocal first
        while time.monotonic() < end and (total is None or counter["n"] < total):
            counter["n"] += 1
            key = f"{method}-{os.getpid()}-{index}-{counter['n']}"
            started = time.time()
            result = await one_call(ch, method, key, timeout, metadata)
            timeline.append([started, result["ms"], result["code"], result["server"]])
            codes[result["code"]] = codes.get(result["code"], 0) + 1
            if result["server"]:
                servers[result["server"]] = servers.get(result["server"], 0) + 1
            if result["code"] != "OK" and first is None:
                first = result
            latencies.append(result["ms"])

    async with channel(target) as ch:
        await asyncio.gather(*(worker(ch, i) for i in range(concurrency)))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0
    summary = {"codes": codes, "servers": servers, "calls": len(latencies),
               "p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99),
               "mean_ms": sum(latencies) / len(latencies) if latencies else 0,
               "first_failure": first}
    if os.environ.get("TIMELINE"):
        summary["timeline"] = timeline
    print(json.dumps(summary), flush=True)


async def burst(target, method, count):
    async with channel(target) as ch:
        results = await asyncio.gather(
            *(one_call(ch, method, f"burst-{os.getpid()}-{i}", None) for i in range(count)))
    print(json.dumps(results), flush=True)


def options(args):
    """[TIMEOUT [NAME=VALUE ...]]: the timeout in seconds ("-" for none) and headers."""
    timeout = float(args[0]) if args and args[0] != "-" else None
    return timeout, [tuple(pair.split("=", 1)) for pair in args[1:]]


def main():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    command = sys.argv[1:2]
    if command == ["serve"]:
        asyncio.run(serve())
    elif command == ["call"]:
        timeout, metadata = options(sys.argv[5:])
        asyncio.run(call(sys.argv[2], sys.argv[3], sys.argv[4], timeout, metadata))
    elif command == ["load"]:
        timeout, metadata = options(sys.argv[6:])
        asyncio.run(load(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), timeout,
                         metadata))
    elif command == ["burst"]:
        asyncio.run(burst(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

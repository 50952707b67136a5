"""Idempotent reads through the shop's gateway, for the host-loss drill (scripts/multihost
--postgres).

    gateway_reads.py seed BASE_URL API_KEY COUNT
        creates COUNT users and an order for each, waits until every user's customer record
        is in orders, and prints {"users": [...], "orders": [...]}.
    gateway_reads.py read BASE_URL API_KEY STOP_FILE SEED_JSON [WORKERS]
        until STOP_FILE appears, each worker reads the seeded users, orders and customers in
        turn (GET, 5 ms apart); prints one JSON object: calls, ok (HTTP 200), statuses, the
        latency's p50, p99 and max in ms, and the failures with the time of each.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def connect(base):
    url = urllib.parse.urlparse(base)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=30)


def request(connection, key, method, path, body=None):
    headers = {"x-api-key": key}
    if body is not None:
        headers["content-type"] = "application/json"
        body = json.dumps(body)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read().decode()


def seed(base, key, count):
    connection = connect(base)
    users, orders = [], []
    for index in range(count):
        status, text = request(connection, key, "POST", "/v1/users",
                               {"email": f"seed-{index}-{os.getpid()}@example.com",
                                "name": f"Seed {index}"})
        if status != 200:
            sys.exit(f"creating a user: {status} {text[:300]}")
        users.append(json.loads(text)["id"])
    deadline = time.time() + 60
    for user in users:
        while request(connection, key, "GET", f"/v1/customers/{user}")[0] != 200:
            if time.time() > deadline:
                sys.exit(f"user {user}'s customer record did not reach orders within 60 s")
            time.sleep(0.2)
    item = {"sku": "TEA", "quantity": 1, "unitPrice": {"currencyCode": "EUR", "minorUnits": 450}}
    for user in users:
        status, text = request(connection, key, "POST", "/v1/orders",
                               {"userId": user, "lineItems": [item]})
        if status != 200:
            sys.exit(f"creating an order: {status} {text[:300]}")
        orders.append(json.loads(text)["id"])
    print(json.dumps({"users": users, "orders": orders}))


def read(base, key, stop_file, seed_file, workers):
    with open(seed_file) as file:
        seeded = json.load(file)
    paths = []
    for user, order in zip(seeded["users"], seeded["orders"]):
        paths += [f"/v1/users/{user}", f"/v1/orders/{order}", f"/v1/customers/{user}"]
    lock = threading.Lock()
    statuses, latencies, failures, failure_times = {}, [], [], []

    def record(status, started, what):
        elapsed = (time.time() - started) * 1000
        with lock:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            latencies.append(elapsed)
            if status != 200:
                failure_times.append(started)
                if len(failures) < 20:
                    failures.append(f"{what} ({elapsed:.0f} ms)")

    def worker(index):
        connection = connect(base)
        n = index
        while not os.path.exists(stop_file):
            path = paths[n % len(paths)]
            n += 1
            started = time.time()
            try:
                status, text = request(connection, key, "GET", path)
                record(status, started, f"GET {path} {status}: {text[:200]}")
            except (OSError, http.client.HTTPException) as error:
                record(0, started, f"GET {path}: {error!r}")
                connection = connect(base)
            time.sleep(0.005)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()

    def quantile(q):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    print(json.dumps({
        "calls": len(latencies), "ok": statuses.get("200", 0), "statuses": statuses,
        "p50_ms": quantile(0.5), "p99_ms": quantile(0.99), "max_ms": quantile(1.0),
        "failures": failures, "failure_times": failure_times[:1000],
    }))


if sys.argv[1] == "seed":
    seed(sys.argv[2], sys.argv[3], int(sys.argv[4]))
elif sys.argv[1] == "read":
    read(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
         int(sys.argv[6]) if len(sys.argv) > 6 else 4)
else:
    sys.exit(__doc__)

"""HTTP load through the shop's gateway until a stop file appears: each worker creates a user
and then an order for it, over and over, pausing 10 ms between rounds (a steady load that
leaves the machine's other tests their share of its cores). Prints one JSON line: calls by HTTP status, the ids
of the orders created and of the users, and the failures' first lines.

    gateway_load.py BASE_URL API_KEY STOP_FILE [WORKERS] [MINOR_UNITS]
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid

base, key, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
workers = int(sys.argv[4]) if len(sys.argv) > 4 else 4
minor = int(sys.argv[5]) if len(sys.argv) > 5 else 450
url = urllib.parse.urlparse(base)
lock = threading.Lock()
statuses = {}
orders = []
users = []
failures = []


def call(connection, path, body):
    connection.request("POST", path, body=json.dumps(body),
                       headers={"x-api-key": key, "content-type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read().decode()


def worker(index):
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    n = 0
    while not os.path.exists(stop_file):
        n += 1
        time.sleep(0.01)
        for attempt in (0, 1):
            try:
                email = f"load-{uuid.uuid4().hex[:12]}@example.com"
                status, text = call(connection, "/v1/users", {"email": email, "name": f"W{index}"})
                user = json.loads(text).get("id") if status == 200 else None
                record(status, text, "CreateUser")
                if user:
                    with lock:
                        users.append(user)
                    item = {"sku": "TEA", "quantity": 1,
                            "unitPrice": {"currencyCode": "EUR", "minorUnits": minor}}
                    status, text = call(connection, "/v1/orders", {"userId": user, "lineItems": [item]})
                    record(status, text, "CreateOrder")
                    if status == 200:
                        with lock:
                            orders.append(json.loads(text)["id"])
                break
            except (OSError, http.client.HTTPException) as error:
                # The gateway's own connection dropped (it was restarted): a new connection.
                record(0, repr(error), "connection")
                connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                time.sleep(0.2)


def record(status, text, what):
    with lock:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status != 200 and len(failures) < 20:
            failures.append(f"{what} {status}: {text[:300]}")


threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"statuses": statuses, "orders": orders, "users": users, "failures": failures}))

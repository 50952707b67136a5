"""Counts the shop's rows after a drill and checks what must hold, reading the services'
databases directly (read-only): their SQLite files, or their PostgreSQL databases.

- every order is CONFIRMED (2) or CANCELLED (3), none PENDING (1);
- every charged payment belongs to exactly one CONFIRMED order, which names it;
- every CONFIRMED order has a charged payment with its id as the idempotency key;
- every user has its customer record in orders;
- with --orders FILE (a JSON list of the order ids the gateway answered): each is there.

    shop_invariants.py DATA_DIR   (DATA_DIR/users/users.sqlite, orders/…, payments/…)
    shop_invariants.py --postgres RUN_JSON   (the databases `meshctl up --postgres` made, as
                                              .trellis/run.json names them; queried with psql)
    either, then --orders FILE

Prints one JSON object: counts, and the violations found (empty when all hold).
"""
import json
import os
import sqlite3
import subprocess
import sys
from urllib.parse import parse_qs, urlparse


class Postgres:
    """One service's database, queried with psql as its own role (the password through the
    environment, never on a command line)."""

    def __init__(self, url):
        parsed = urlparse(url)
        self.target = (f"host={parsed.hostname} port={parsed.port} user={parsed.username} "
                       f"dbname={parsed.path.lstrip('/')}")
        with open(parse_qs(parsed.query)["password_file"][0]) as file:
            self.password = file.read().strip()

    def execute(self, sql):
        result = subprocess.run(
            ["psql", self.target, "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PGPASSWORD": self.password})
        rows = []
        for line in result.stdout.splitlines():
            rows.append(tuple(int(field) if field.isdigit() else field
                              for field in line.split("\t")))
        return Rows(rows)


class Rows(list):
    def fetchone(self):
        return self[0]


answered = []
if "--orders" in sys.argv:
    at = sys.argv.index("--orders")
    with open(sys.argv[at + 1]) as file:
        answered = json.load(file)
    del sys.argv[at:at + 2]

if sys.argv[1] == "--postgres":
    with open(sys.argv[2]) as file:
        urls = json.load(file)["postgres"]["urls"]

    def connect(name):
        return Postgres(urls[name])
else:
    data = sys.argv[1]

    def connect(name):
        return sqlite3.connect(f"file:{data}/{name}/{name}.sqlite?mode=ro", uri=True, timeout=30)


users = connect("users")
orders = connect("orders")
payments = connect("payments")
user_ids = {row[0] for row in users.execute("SELECT id FROM users")}
customers = {row[0] for row in orders.execute("SELECT user_id FROM customers")}
order_rows = {row[0]: (row[1], row[2]) for row in
              orders.execute("SELECT id, status, payment_id FROM orders")}
charged = list(payments.execute(
    "SELECT id, order_id, idempotency_key FROM payments WHERE status = 1"))
all_payments = list(payments.execute("SELECT id, order_id, status FROM payments"))
violations = []
by_status = {}
for order_id, (status, _) in order_rows.items():
    by_status[status] = by_status.get(status, 0) + 1
    if status not in (2, 3):
        violations.append(f"order {order_id} is in status {status}")
charged_orders = {}
for payment_id, order_id, key in charged:
    charged_orders.setdefault(order_id, []).append(payment_id)
    order = order_rows.get(order_id)
    if order is None:
        violations.append(f"charged payment {payment_id} belongs to no order ({order_id})")
    elif order[0] != 2 or order[1] != payment_id:
        violations.append(f"charged payment {payment_id}: order {order_id} is {order}")
    if key != order_id:
        violations.append(f"payment {payment_id} has key {key}, not its order's id")
for order_id, ids in charged_orders.items():
    if len(ids) > 1:
        violations.append(f"order {order_id} was charged {len(ids)} times: {ids}")
for order_id, (status, payment_id) in order_rows.items():
    if status == 2 and order_id not in charged_orders:
        violations.append(f"confirmed order {order_id} has no charged payment")
missing = sorted(user_ids - customers)
if missing:
    violations.append(f"{len(missing)} users have no customer record: {missing[:5]}")
lost = [order_id for order_id in answered if order_id not in order_rows]
if lost:
    violations.append(f"{len(lost)} orders answered are missing: {lost[:5]}")
pending_sagas = orders.execute("SELECT COUNT(*) FROM sagas WHERE step != 'done'").fetchone()[0]
print(json.dumps({
    "users": len(user_ids), "customers": len(customers), "orders": len(order_rows),
    "orders_by_status": {str(k): v for k, v in by_status.items()},
    "charged_payments": len(charged), "payments": len(all_payments),
    "unfinished_sagas": pending_sagas, "answered_orders_missing": len(lost),
    "violations": violations[:30],
}))

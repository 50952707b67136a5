"""A Python grpcio client (stubs from grpcio-tools) calling the three Swift shop services.

Usage: shop_client.py STUB_DIR PROTO_DIR USERS_ADDR ORDERS_ADDR PAYMENTS_ADDR
Prints each check as it passes; exits non-zero on the first failure.
"""
import sys
import uuid

import grpc

from codegen import generate

stub_dir, proto_dir, users_addr, orders_addr, payments_addr = sys.argv[1:6]
generate(stub_dir, [proto_dir], [
    "shop/v1/money.proto", "shop/v1/users.proto", "shop/v1/orders.proto",
    "shop/v1/payments.proto", "google/api/http.proto", "google/api/annotations.proto",
])
from shop.v1 import orders_pb2, orders_pb2_grpc, payments_pb2, payments_pb2_grpc  # noqa: E402
from shop.v1 import users_pb2, users_pb2_grpc, money_pb2  # noqa: E402


def expect_status(code, call):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        return error.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def check(name):
    print(f"ok: {name}", flush=True)


users = users_pb2_grpc.UserServiceStub(grpc.insecure_channel(users_addr))
email = f"py-{uuid.uuid4().hex[:8]}@example.com"
user = users.CreateUser(users_pb2.CreateUserRequest(email=email, name="Grace"))
assert user.id.startswith("usr_") and user.email == email and user.create_time.seconds > 0
assert users.GetUser(users_pb2.GetUserRequest(id=user.id)) == user
check("users: create and get")
details = expect_status(grpc.StatusCode.ALREADY_EXISTS,
                        lambda: users.CreateUser(users_pb2.CreateUserRequest(email=email, name="G")))
assert email in details, details
expect_status(grpc.StatusCode.NOT_FOUND, lambda: users.GetUser(users_pb2.GetUserRequest(id="usr_x")))
details = expect_status(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: users.CreateUser(users_pb2.CreateUserRequest(email="bad", name="G")))
assert details.startswith("email:"), details
page = users.ListUsers(users_pb2.ListUsersRequest(page_size=1000))
assert user.id in [u.id for u in page.users]
check("users: errors and listing")

orders = orders_pb2_grpc.OrderServiceStub(grpc.insecure_channel(orders_addr))
price = money_pb2.Money(currency_code="EUR", minor_units=1250)
order = orders.CreateOrder(orders_pb2.CreateOrderRequest(
    user_id=user.id, line_items=[orders_pb2.LineItem(sku="TEA", quantity=4, unit_price=price)]))
assert order.status == orders_pb2.ORDER_STATUS_PENDING and order.total.minor_units == 5000
listed = orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=user.id))
assert [o.id for o in listed.orders] == [order.id]
cancelled = orders.CancelOrder(orders_pb2.CancelOrderRequest(id=order.id))
assert cancelled.status == orders_pb2.ORDER_STATUS_CANCELLED
assert orders.CancelOrder(orders_pb2.CancelOrderRequest(id=order.id)) == cancelled
check("orders: create, list, cancel twice")

payments = payments_pb2_grpc.PaymentServiceStub(grpc.insecure_channel(payments_addr))
key = uuid.uuid4().hex
request = payments_pb2.ChargeRequest(idempotency_key=key, order_id=order.id, amount=price)
first = payments.Charge(request)
assert payments.Charge(request) == first
assert first.status == payments_pb2.PAYMENT_STATUS_CHARGED
refunded = payments.Refund(payments_pb2.RefundRequest(id=first.id, reason="test"))
assert refunded.status == payments_pb2.PAYMENT_STATUS_REFUNDED
assert payments.GetPayment(payments_pb2.GetPaymentRequest(id=first.id)) == refunded
huge = payments_pb2.ChargeRequest(idempotency_key=uuid.uuid4().hex, order_id=order.id,
                                  amount=money_pb2.Money(currency_code="EUR", minor_units=10**12))
details = expect_status(grpc.StatusCode.FAILED_PRECONDITION, lambda: payments.Charge(huge))
assert "declined" in details, details
check("payments: idempotent charge, refund, decline")
print("python client: all checks passed")

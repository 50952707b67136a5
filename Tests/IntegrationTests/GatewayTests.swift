import Foundation
import TestSupport
import Testing

/// An HTTP exchange made with curl, an independent client.
struct HTTPExchange {
  let status: Int
  /// Header names lowercased; the last value of a repeated header.
  let headers: [String: String]
  let body: String

  var json: [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:]
  }
  /// `error.message` of a Google-style error body.
  var errorMessage: String { (json["error"] as? [String: Any])?["message"] as? String ?? "" }
  var errorStatus: String { (json["error"] as? [String: Any])?["status"] as? String ?? "" }
}

func http(
  _ method: String, _ url: String, headers: [String: String] = [:], body: Data? = nil,
  options: [String] = []
) throws -> HTTPExchange {
  let directory = try makeTemporaryDirectory("http")
  let headerFile = directory.appendingPathComponent("headers").path
  var arguments = ["-s", "-X", method, "-D", headerFile, "-o", "-", url] + options
  for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
    arguments += ["-H", "\(name): \(value)"]
  }
  if body != nil { arguments += ["--data-binary", "@-", "-H", "content-type: application/json"] }
  let result = try run("curl", arguments, stdin: body)
  guard result.status == 0 else { throw HarnessError("curl \(method) \(url): \(result.stderr)") }
  let head = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
  var status = 0
  var fields: [String: String] = [:]
  for line in head.split(whereSeparator: \.isNewline) {
    if line.hasPrefix("HTTP/") {
      status = Int(line.split(separator: " ")[1]) ?? 0
      fields = [:]
    } else if let colon = line.firstIndex(of: ":") {
      fields[line[..<colon].lowercased()] = line[line.index(after: colon)...]
        .trimmingCharacters(in: .whitespaces)
    }
  }
  return HTTPExchange(status: status, headers: fields, body: result.stdout)
}

/// The gateway in front of the three services (real processes; without a mesh, straight to
/// each service): transcoding from the google.api.http annotations, the saga seen over HTTP,
/// and the gateway's own answers.
@Suite(.serialized) struct GatewayTests {
  final class Shop {
    let folder: URL
    let users: ServiceProcess
    let payments: ServiceProcess
    let orders: ServiceProcess
    let gateway: ServiceProcess
    let h2c: String
    let key = "test-key-\(UUID().uuidString.prefix(8))"
    var base: String { "http://\(gateway.address)" }

    init(maxBody: Int = 4096) throws {
      folder = try makeTemporaryDirectory("gateway")
      users = try startService(
        "user-service", database: folder.appendingPathComponent("users.sqlite"))
      payments = try startService(
        "payment-service", database: folder.appendingPathComponent("payments.sqlite"),
        extra: ["--charge-limit", "100000"])
      orders = try startService(
        "order-service", database: folder.appendingPathComponent("orders.sqlite"),
        extra: ["--payments", payments.address])
      let keys = folder.appendingPathComponent("api-keys")
      try "# keys of the test\n\(key)\n".write(to: keys, atomically: true, encoding: .utf8)
      h2c = "127.0.0.1:\(try freeLoopbackPort())"
      gateway = try ServiceProcess(
        binary("gateway"),
        [
          "--listen", "127.0.0.1:0", "--h2c-listen", h2c, "--api-keys-file", keys.path,
          "--max-body-bytes", "\(maxBody)", "--cors-origin", "https://shop.example",
          "--upstream", "users=\(users.address)", "--upstream", "orders=\(orders.address)",
          "--upstream", "payments=\(payments.address)",
        ])
    }

    var auth: [String: String] { ["x-api-key": key] }

    func post(
      _ path: String, _ json: String, headers: [String: String]? = nil
    ) throws
      -> HTTPExchange
    {
      try http("POST", base + path, headers: headers ?? auth, body: Data(json.utf8))
    }

    func get(_ path: String, headers: [String: String]? = nil) throws -> HTTPExchange {
      try http("GET", base + path, headers: headers ?? auth)
    }
  }

  static func order(_ user: String, minor: Int) -> String {
    #"{"userId":"\#(user)","lineItems":[{"sku":"TEA","quantity":2,"unitPrice":{"currencyCode":"EUR","minorUnits":\#(minor)}}]}"#
  }

  @Test func usersAndOrdersOverHTTPWithTheSaga() throws {
    let shop = try Shop()
    let created = try shop.post("/v1/users", #"{"email":"ada@example.com","name":"Ada"}"#)
    #expect(created.status == 200, "\(created)")
    #expect(created.headers["content-type"]?.hasPrefix("application/json") == true)
    let user = try #require(created.json["id"] as? String)
    #expect(try shop.get("/v1/users/\(user)").json["email"] as? String == "ada@example.com")
    let taken = try shop.post("/v1/users", #"{"email":"ADA@example.com","name":"Ada"}"#)
    #expect(taken.status == 409)
    #expect(taken.errorStatus == "ALREADY_EXISTS")

    let confirmed = try shop.post("/v1/orders", Self.order(user, minor: 450))
    #expect(confirmed.status == 200, "\(confirmed)")
    #expect(confirmed.json["status"] as? String == "ORDER_STATUS_CONFIRMED")
    let payment = try #require(confirmed.json["paymentId"] as? String)
    let paid = try shop.get("/v1/payments/\(payment)")
    #expect(paid.json["idempotencyKey"] as? String == confirmed.json["id"] as? String)
    #expect((paid.json["amount"] as? [String: Any])?["minorUnits"] as? String == "900")

    let declined = try shop.post("/v1/orders", Self.order(user, minor: 90_000))
    #expect(declined.json["status"] as? String == "ORDER_STATUS_CANCELLED", "\(declined)")
    #expect(
      declined.json["cancelReason"] as? String
        == "payment declined: charge declined: 180000 EUR minor units exceeds the limit of 100000")

    let listed = try shop.get("/v1/users/\(user)/orders?page_size=1")
    #expect((listed.json["orders"] as? [[String: Any]])?.count == 1)
    let token = try #require(listed.json["nextPageToken"] as? String)
    let next = try shop.get("/v1/users/\(user)/orders?pageSize=1&page_token=\(token)")
    #expect(
      (next.json["orders"] as? [[String: Any]])?.first?["id"] as? String == declined.json["id"]
        as? String)

    let cancel = try shop.post("/v1/orders/\(confirmed.json["id"] as! String):cancel", "{}")
    #expect(cancel.status == 400)
    #expect(cancel.errorStatus == "FAILED_PRECONDITION")
    #expect(cancel.errorMessage.contains("is confirmed"))

    // The same API over h2c (prior knowledge).
    let overH2 = try http(
      "GET", "http://\(shop.h2c)/v1/users/\(user)", headers: shop.auth,
      options: ["--http2-prior-knowledge"])
    #expect(overH2.status == 200)
    #expect(overH2.json["id"] as? String == user)
  }

  @Test func theGatewaysOwnAnswers() throws {
    let shop = try Shop(maxBody: 2000)
    // Unknown route, wrong method.
    let unknown = try shop.get("/v2/nothing")
    #expect(unknown.status == 404)
    #expect(unknown.errorStatus == "NOT_FOUND")
    #expect(unknown.errorMessage == "no route for GET /v2/nothing")
    let wrongMethod = try http("DELETE", shop.base + "/v1/orders/ord_1", headers: shop.auth)
    #expect(wrongMethod.status == 405)
    #expect(wrongMethod.headers["allow"] == "GET")
    // A service's NOT_FOUND.
    let missing = try shop.get("/v1/orders/ord_missing")
    #expect(missing.status == 404)
    #expect(missing.errorMessage == "order ord_missing not found")
    // Bad JSON, named.
    let truncated = try shop.post("/v1/users", #"{"email": "#)
    #expect(truncated.status == 400)
    #expect(truncated.errorStatus == "INVALID_ARGUMENT")
    #expect(truncated.errorMessage.hasPrefix("request body: invalid JSON at line 1, column 11"))
    let misspelt = try shop.post("/v1/users", #"{"emial": "ada@example.com"}"#)
    #expect(misspelt.status == 400)
    #expect(misspelt.errorMessage.contains("\"emial\""), "\(misspelt.errorMessage)")
    let badQuery = try shop.get("/v1/users/usr_1/orders?page_size=many")
    #expect(badQuery.status == 400)
    #expect(badQuery.errorMessage == #"page_size: "many" is not an integer"#)
    let unknownQuery = try shop.get("/v1/users/usr_1/orders?colour=red")
    #expect(
      unknownQuery.errorMessage
        == "query parameter colour: shop.v1.ListOrdersRequest has no such field")
    let invalid = try shop.post("/v1/users", #"{"email":"nope","name":"N"}"#)
    #expect(invalid.status == 400)
    #expect(invalid.errorMessage == #"email: "nope" is not a valid email address"#)
    // Keys.
    let anonymous = try shop.get("/v1/users/usr_1", headers: [:])
    #expect(anonymous.status == 401)
    #expect(anonymous.errorStatus == "UNAUTHENTICATED")
    #expect(anonymous.headers["www-authenticate"] == "Bearer")
    let wrongKey = try shop.get("/v1/users/usr_1", headers: ["x-api-key": "guess"])
    #expect(wrongKey.status == 401)
    let bearer = try shop.get("/v1/users/usr_1", headers: ["authorization": "Bearer \(shop.key)"])
    #expect(bearer.status == 404)
    // Too large, with and without a length up front.
    let big = Data(("{\"name\":\"" + String(repeating: "x", count: 3000) + "\"}").utf8)
    let tooLarge = try http("POST", shop.base + "/v1/users", headers: shop.auth, body: big)
    #expect(tooLarge.status == 413)
    #expect(tooLarge.errorMessage == "request body: larger than the limit of 2000 bytes")
    let chunked = try http(
      "POST", shop.base + "/v1/users",
      headers: shop.auth.merging(["transfer-encoding": "chunked"]) { $1 }, body: big)
    #expect(chunked.status == 413)
    // Request ids: the caller's kept, else a new one; a trace id on every answer.
    let mine = try shop.get(
      "/v1/users/usr_1", headers: shop.auth.merging(["x-request-id": "abc-123"]) { $1 })
    #expect(mine.headers["x-request-id"] == "abc-123")
    #expect(anonymous.headers["x-request-id"]?.hasPrefix("req_") == true)
    #expect(unknown.headers["x-trace-id"]?.count == 32)
    #expect(unknown.headers["x-trace-id"] != missing.headers["x-trace-id"])
    // CORS: a preflight from the allowed origin is answered without a key; another origin
    // gets no CORS headers.
    let preflight = try http(
      "OPTIONS", shop.base + "/v1/users",
      headers: ["origin": "https://shop.example", "access-control-request-method": "POST"])
    #expect(preflight.status == 204)
    #expect(preflight.headers["access-control-allow-origin"] == "https://shop.example")
    #expect(preflight.headers["access-control-allow-headers"]?.contains("x-api-key") == true)
    let allowed = try shop.get(
      "/v1/users/usr_1", headers: shop.auth.merging(["origin": "https://shop.example"]) { $1 })
    #expect(allowed.headers["access-control-allow-origin"] == "https://shop.example")
    #expect(allowed.headers["access-control-expose-headers"]?.contains("x-request-id") == true)
    let foreign = try shop.get(
      "/v1/users/usr_1", headers: shop.auth.merging(["origin": "https://evil.example"]) { $1 })
    #expect(foreign.headers["access-control-allow-origin"] == nil)
    // The gateway kept serving through all of that.
    #expect(try shop.post("/v1/users", #"{"email":"z@example.com","name":"Z"}"#).status == 200)
    // One log line per request, with its id.
    #expect(shop.gateway.log.contains(#""request_id":"abc-123""#))
  }

  @Test func badFlagsAreNamed() throws {
    let none = try run(binary("gateway"), [])
    #expect(none.status != 0)
    #expect(none.stderr.contains("give --sidecar HOST:PORT, or --upstream NAME=HOST:PORT"))
    let bad = try run(binary("gateway"), ["--upstream", "shipping=127.0.0.1:1"])
    #expect(bad.status != 0)
    #expect(bad.stderr.contains("--upstream shipping=127.0.0.1:1: expected NAME=HOST:PORT"))
    let keys = try makeTemporaryDirectory("keys").appendingPathComponent("empty")
    try "# nothing\n".write(to: keys, atomically: true, encoding: .utf8)
    let empty = try run(
      binary("gateway"), ["--upstream", "users=127.0.0.1:1", "--api-keys-file", keys.path])
    #expect(empty.status != 0)
    #expect(empty.stderr.contains("holds no key"))
    // A port another process keeps past --bind-wait is named.
    let holder = try ServiceProcess(
      try resolve("python3"),
      [
        "-c",
        """
        import json, socket, sys, time
        s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
        print(json.dumps({"message": "listening", "address": "127.0.0.1:%d" % s.getsockname()[1]}), file=sys.stderr, flush=True)
        time.sleep(60)
        """,
      ])
    defer { holder.stop() }
    let busy = try run(
      binary("gateway"),
      ["--listen", holder.address, "--upstream", "users=127.0.0.1:1", "--bind-wait", "0.3"])
    #expect(busy.status == 1)
    #expect(
      busy.stderr.contains(
        """
        gateway: cannot listen on \(holder.address): the address is still in use after waiting 0.3 \
        seconds
        """
      ),
      "\(busy.stderr)")
  }
}

import APIGateway
import MeshTranscoding
import ShopProtos
import Testing

/// Path templates, the route table built from shop.v1's annotations, and transcoding.
@Suite struct RoutingTests {
  let pool = try! DescriptorPool(fileDescriptorSet: ShopProtosDescriptors.fileDescriptorSet)

  @Test func templatesMatchAndCapture() throws {
    let get = try PathTemplate(parsing: "/v1/orders/{id}")
    #expect(get.match("/v1/orders/ord_1") == ["id": "ord_1"])
    #expect(get.match("/v1/orders/ord%201") == ["id": "ord 1"])
    #expect(get.match("/v1/orders") == nil)
    #expect(get.match("/v1/orders/") == nil)
    #expect(get.match("/v1/orders/a/b") == nil)
    let verb = try PathTemplate(parsing: "/v1/orders/{id}:cancel")
    #expect(verb.match("/v1/orders/ord_1:cancel") == ["id": "ord_1"])
    #expect(verb.match("/v1/orders/ord_1") == nil)
    let nested = try PathTemplate(parsing: "/v1/users/{user_id}/orders")
    #expect(nested.match("/v1/users/usr_9/orders") == ["user_id": "usr_9"])
    let pattern = try PathTemplate(parsing: "/v1/{name=shelves/*/books/*}")
    #expect(pattern.match("/v1/shelves/1/books/2") == ["name": "shelves/1/books/2"])
    #expect(pattern.match("/v1/shelves/1") == nil)
    let rest = try PathTemplate(parsing: "/v1/{path=files/**}")
    #expect(rest.match("/v1/files/a/b%2Fc") == ["path": "files/a/b%2Fc"])
    #expect(pattern.fieldPaths == ["name"])
  }

  @Test func badTemplatesSayWhatIsWrong() {
    #expect(throws: PathTemplateError.self) { try PathTemplate(parsing: "v1/x") }
    #expect(throws: PathTemplateError.self) { try PathTemplate(parsing: "/v1/{id") }
    #expect(throws: PathTemplateError.self) { try PathTemplate(parsing: "/v1/**/x") }
    #expect(throws: PathTemplateError.self) { try PathTemplate(parsing: "/v1//x") }
    do {
      _ = try PathTemplate(parsing: "/v1/{}")
    } catch {
      #expect(error.description.contains("a variable without a field name"))
    }
  }

  @Test func theShopsAnnotationsMakeTheRoutes() throws {
    let table = try RouteTable(pool: pool)
    let names = Set(table.routes.map { "\($0.httpMethod) \($0.template)" })
    #expect(names.contains("POST /v1/users"))
    #expect(names.contains("GET /v1/users/{id}"))
    #expect(names.contains("POST /v1/orders"))
    #expect(names.contains("GET /v1/orders/{id}"))
    #expect(names.contains("POST /v1/orders/{id}:cancel"))
    #expect(names.contains("GET /v1/users/{user_id}/orders"))
    #expect(names.contains("GET /v1/customers/{user_id}"))
    // Streaming methods have no binding.
    #expect(!table.routes.contains { $0.method.serverStreaming || $0.method.clientStreaming })
    guard
      case .matched(let route, let values) = table.resolve(method: "GET", path: "/v1/orders/ord_7")
    else {
      Issue.record("GET /v1/orders/ord_7 did not match")
      return
    }
    #expect(route.method.fullPath == "shop.v1.OrderService/GetOrder")
    #expect(values == ["id": "ord_7"])
    guard
      case .methodNotAllowed(let allowed) = table.resolve(method: "DELETE", path: "/v1/orders/x")
    else {
      Issue.record("DELETE /v1/orders/x should be a known path with other methods")
      return
    }
    #expect(allowed == ["GET"])
    guard case .notFound = table.resolve(method: "GET", path: "/v2/nothing") else {
      Issue.record("/v2/nothing matched")
      return
    }
  }

  @Test func requestsAreBuiltFromPathQueryAndBody() throws {
    let table = try RouteTable(pool: pool)
    let transcoder = Transcoder(pool: pool)
    guard
      case .matched(let list, let values) = table.resolve(
        method: "GET", path: "/v1/users/usr_1/orders")
    else { throw RoutingError() }
    let bytes = try transcoder.request(
      for: list, pathValues: values, query: [("page_size", "5"), ("pageToken", "abc")], body: [])
    let request = try Shop_V1_ListOrdersRequest(serializedBytes: bytes)
    #expect(request.userID == "usr_1")
    #expect(request.pageSize == 5)
    #expect(request.pageToken == "abc")

    guard case .matched(let create, let none) = table.resolve(method: "POST", path: "/v1/users")
    else { throw RoutingError() }
    let created = try Shop_V1_CreateUserRequest(
      serializedBytes: try transcoder.request(
        for: create, pathValues: none, query: [],
        body: Array(#"{"email": "ada@example.com", "name": "Ada"}"#.utf8)))
    #expect(created.email == "ada@example.com")
    #expect(created.name == "Ada")

    func failure(_ body: String, query: [(String, String)] = []) -> String {
      do {
        _ = try transcoder.request(
          for: create, pathValues: none, query: query, body: Array(body.utf8))
        return "accepted"
      } catch {
        #expect(error.httpStatus == 400)
        return error.message
      }
    }
    #expect(failure(#"{"email": "#).hasPrefix("request body: "))
    #expect(failure(#"["x"]"#) == "request body: must be a JSON object")
    #expect(failure(#"{"emial": "x"}"#).contains("emial"))
    #expect(failure(#"{"name": 5}"#).hasPrefix("name"))

    do {
      _ = try transcoder.request(
        for: list, pathValues: values, query: [("page_size", "many")], body: [])
      Issue.record("page_size=many was accepted")
    } catch {
      #expect(error.message == #"page_size: "many" is not an integer"#)
    }
    do {
      _ = try transcoder.request(
        for: list, pathValues: values, query: [("user_id", "other")], body: [])
      Issue.record("a query parameter bound by the path was accepted")
    } catch {
      #expect(error.message == "query parameter user_id: is bound by the path")
    }
  }

  @Test func statusesMapAsGooglesAPIsMapThem() {
    #expect(StatusMapping.httpStatus(forGRPCCode: 5) == 404)
    #expect(StatusMapping.httpStatus(forGRPCCode: 3) == 400)
    #expect(StatusMapping.httpStatus(forGRPCCode: 9) == 400)
    #expect(StatusMapping.httpStatus(forGRPCCode: 6) == 409)
    #expect(StatusMapping.httpStatus(forGRPCCode: 7) == 403)
    #expect(StatusMapping.httpStatus(forGRPCCode: 16) == 401)
    #expect(StatusMapping.httpStatus(forGRPCCode: 14) == 503)
    #expect(StatusMapping.httpStatus(forGRPCCode: 4) == 504)
    #expect(StatusMapping.httpStatus(forGRPCCode: 8) == 429)
    #expect(StatusMapping.httpStatus(forGRPCCode: 12) == 501)
    #expect(StatusMapping.name(forGRPCCode: 5) == "NOT_FOUND")
    let body = GatewayError(httpStatus: 404, code: "NOT_FOUND", message: "order x not found")
      .jsonBody
    #expect(body.contains(#""status": "NOT_FOUND""#) || body.contains(#""status":"NOT_FOUND""#))
  }
}

struct RoutingError: Error {}

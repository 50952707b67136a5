import MeshProtos
import MeshTranscoding
import ShopProtos
import SwiftProtobuf
import Testing

/// Bad input gets a clear error naming what and where; good input maps as proto3 JSON says.
@Suite struct JSONMappingTests {
  let pool = try! DescriptorPool(fileDescriptorSet: ShopProtosDescriptors.fileDescriptorSet)

  func order(_ json: String) throws -> DynamicMessage {
    try DynamicMessage(
      descriptor: pool.message(named: "shop.v1.CreateOrderRequest")!, jsonString: json,
      pool: pool)
  }

  func error(_ json: String) -> String {
    do {
      _ = try order(json)
      return "no error"
    } catch {
      return "\(error)"
    }
  }

  @Test func syntaxErrorsSayWhere() {
    #expect(
      error("{\"userId\": \"u\",\n  \"lineItems\": [}")
        == "invalid JSON at line 2, column 17: unexpected '}', expected a value")
    #expect(
      error("{\"userId\": 'u'}")
        == "invalid JSON at line 1, column 12: unexpected ''', expected a value")
    #expect(error("{} {}").contains("unexpected '{' after the value"))
    #expect(error("{\"userId\": \"u\\q\"}").contains("invalid escape '\\q'"))
    #expect(error("{\"userId\": 01}").contains("leading zero"))
  }

  @Test func stringsAreWrittenEscapedOnlyWhereJSONNeedsIt() throws {
    func written(_ text: String) -> String { JSONValue.string(text).serialized(pretty: false) }
    #expect(written("plain ASCII, no escapes") == #""plain ASCII, no escapes""#)
    #expect(written("é 日本 € 😀") == "\"é 日本 € 😀\"", "non-ASCII is written as it is")
    #expect(written("a\"b\\c") == #""a\"b\\c""#)
    #expect(written("\n\r\t\u{08}\u{0C}") == #""\n\r\t\b\f""#)
    #expect(written("\u{01}\u{1F}") == #""\u0001\u001f""#)
    #expect(written("€\u{2028}\u{2029}") == #""€\u2028\u2029""#)
    // Every string reads back as itself.
    for text in ["", "x", "€", "a\"€\n", "\u{2028}", String(repeating: "é\\", count: 300)] {
      #expect(try JSONParser.parse(written(text)) == .string(text))
    }
  }

  @Test func mappingErrorsNameTheField() {
    #expect(error(#"{"userID": "u"}"#) == #"shop.v1.CreateOrderRequest has no field "userID""#)
    #expect(error(#"{"userId": 5}"#) == "user_id: expected a string, got a number")
    #expect(
      error(#"{"lineItems": [{"quantity": 1.5}]}"#)
        == "line_items[0].quantity: 1.5 is not a whole number in the range of int32")
    #expect(
      error(#"{"lineItems": [{"quantity": 3000000000}]}"#)
        == "line_items[0].quantity: 3000000000 is not a whole number in the range of int32")
    #expect(
      error(#"{"lineItems": [{"unitPrice": {"minorUnits": "12x"}}]}"#)
        == #"line_items[0].unit_price.minor_units: "12x" is not an integer"#)
    #expect(error(#"{"lineItems": {}}"#) == "line_items: expected an array, got an object")
    #expect(error(#"{"userId": "a", "user_id": "b"}"#) == "user_id: field is set twice")
    #expect(error(#"{"lineItems": [null]}"#) == "line_items[0]: a repeated element cannot be null")
  }

  @Test func unknownFieldsCanBeIgnored() throws {
    let message = try DynamicMessage(
      descriptor: pool.message(named: "shop.v1.CreateOrderRequest")!,
      jsonString: #"{"userId": "u", "extra": {"deep": [1]}}"#, pool: pool,
      options: JSONDecodingOptions(ignoreUnknownFields: true))
    #expect(message["user_id"] == .string("u"))
  }

  @Test func encodesLikeGeneratedCode() throws {
    // The generated Swift type and the dynamic message agree on the bytes.
    let typed = Shop_V1_CreateOrderRequest.with {
      $0.userID = "usr_1"
      $0.lineItems = [
        .with {
          $0.sku = "BOOK-1"
          $0.quantity = 2
          $0.unitPrice = .with {
            $0.currencyCode = "EUR"
            $0.minorUnits = 1999
          }
        }
      ]
    }
    let dynamic = try order(
      #"{"userId":"usr_1","lineItems":[{"sku":"BOOK-1","quantity":2,"unitPrice":{"currencyCode":"EUR","minorUnits":"1999"}}]}"#
    )
    #expect(dynamic.serializedBytes() == (try typed.serializedBytes() as [UInt8]))
    #expect(try dynamic.jsonString(pool: pool, pretty: false) == (try typed.jsonString()))
  }

  @Test func emitDefaultsWritesFieldsWithoutPresence() throws {
    let user = try DynamicMessage(
      descriptor: pool.message(named: "shop.v1.User")!, jsonString: "{}", pool: pool)
    #expect(try user.jsonString(pool: pool, pretty: false) == "{}")
    #expect(
      try user.jsonString(pool: pool, options: .init(emitDefaults: true), pretty: false)
        == #"{"id":"","email":"","name":""}"#)
  }

  @Test func truncatedBytesAreAnError() throws {
    let user = pool.message(named: "shop.v1.User")!
    #expect(throws: WireFormatError.self) {
      try DynamicMessage(descriptor: user, serializedBytes: [0x0A, 0x05, 0x61])
    }
    #expect(throws: WireFormatError.self) {
      try DynamicMessage(descriptor: user, serializedBytes: [0x08, 0xFF])
    }
    // A field the descriptor does not know is kept and written back unchanged.
    let unknown: [UInt8] = [0xA0, 0x06, 0x2A]  // field 100, varint 42
    let decoded = try DynamicMessage(descriptor: user, serializedBytes: unknown)
    #expect(decoded.serializedBytes() == unknown)
  }
}

/// Descriptors come from other programs: a malformed one is an error, never a crash.
@Suite struct DescriptorPoolTests {
  func file(
    _ build: (inout Google_Protobuf_FileDescriptorProto) -> Void
  )
    -> Google_Protobuf_FileDescriptorProto
  {
    var file = Google_Protobuf_FileDescriptorProto()
    file.name = "t.proto"
    file.package = "t"
    file.syntax = "proto3"
    build(&file)
    return file
  }

  @Test func derivesJSONNamesLikeProtoc() throws {
    // Descriptors from other implementations may lack json_name.
    let pool = try DescriptorPool(files: [
      file { f in
        f.messageType = [
          .with {
            $0.name = "M"
            $0.field = [
              .with {
                $0.name = "line_items_2"
                $0.number = 1
                $0.type = .int32
                $0.label = .optional
              },
              .with {
                $0.name = "__x__y"
                $0.number = 2
                $0.type = .string
                $0.label = .optional
              },
            ]
          }
        ]
      }
    ])
    let message = try #require(pool.message(named: "t.M"))
    #expect(message.fields.map(\.jsonName) == ["lineItems2", "XY"])
    #expect(protocJSONName("foo_bar_baz") == "fooBarBaz")
  }

  @Test func rejectsMalformedDescriptors() {
    func problem(_ files: [Google_Protobuf_FileDescriptorProto]) -> String {
      do {
        _ = try DescriptorPool(files: files)
        return "accepted"
      } catch {
        return "\(error)"
      }
    }
    let missingType = file { f in
      f.messageType = [
        .with {
          $0.name = "M"
          $0.field = [
            .with {
              $0.name = "x"
              $0.number = 1
              $0.label = .optional
              $0.type = .message
              $0.typeName = ".t.Missing"
            }
          ]
        }
      ]
    }
    #expect(problem([missingType]) == "field t.M.x refers to unknown type .t.Missing")
    let missingImport = file { $0.dependency = ["other.proto"] }
    #expect(
      problem([missingImport]) == "t.proto imports other.proto, which is not in the descriptor set")
    let duplicateNumber = file { f in
      f.messageType = [
        .with {
          $0.name = "M"
          $0.field = [
            .with {
              $0.name = "a"; $0.number = 1; $0.type = .int32
            },
            .with {
              $0.name = "b"; $0.number = 1; $0.type = .int32
            },
          ]
        }
      ]
    }
    #expect(problem([duplicateNumber]) == "t.M uses field number 1 twice")
    #expect(throws: DescriptorError.self) { try DescriptorPool(fileDescriptorSet: [0x0A, 0xFF]) }
  }

  @Test func findsTheFileDeclaringASymbol() throws {
    let pool = try DescriptorPool(fileDescriptorSet: ShopProtosDescriptors.fileDescriptorSet)
    #expect(pool.fileName(containingSymbol: "shop.v1.UserService") == "shop/v1/users.proto")
    #expect(pool.fileName(containingSymbol: "shop.v1.UserService.GetUser") == "shop/v1/users.proto")
    #expect(pool.fileName(containingSymbol: "shop.v1.Money") == "shop/v1/money.proto")
    #expect(
      pool.fileName(containingSymbol: "shop.v1.ORDER_STATUS_CONFIRMED") == "shop/v1/orders.proto")
    let files = pool.fileWithDependencies("shop/v1/orders.proto").map(\.name)
    #expect(files.first == "shop/v1/orders.proto")
    #expect(Set(files).isSuperset(of: ["shop/v1/money.proto", "google/api/annotations.proto"]))
    let getUser = try #require(pool.service(named: "shop.v1.UserService")?.method(named: "GetUser"))
    #expect(getUser.idempotencyLevel == .noSideEffects)
    let cancel = try #require(
      pool.service(named: "shop.v1.OrderService")?.method(named: "CancelOrder"))
    #expect(cancel.idempotencyLevel == .idempotent)
  }
}

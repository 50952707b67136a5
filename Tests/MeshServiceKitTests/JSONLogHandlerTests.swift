import Foundation
import Logging
import Testing

@testable import MeshServiceKit

@Suite struct JSONLogHandlerTests {
  private func object(_ line: String) throws -> [String: Any] {
    #expect(line.hasSuffix("}\n") && line.filter { $0 == "\n" }.count == 1, "\(line)")
    return try #require(
      try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
  }

  private func event(_ message: Logger.Message, _ metadata: Logger.Metadata?) -> LogEvent {
    LogEvent(
      level: .info, message: message, metadata: metadata, source: nil, file: #fileID,
      function: #function, line: #line)
  }

  @Test func aLineIsOneJSONObjectWithSortedMetadata() throws {
    var handler = JSONLogHandler(label: "order-service")
    handler[metadataKey: "replica"] = "b"
    handler[metadataKey: "peer"] = "handler's"
    let line = handler.line(
      for: event(
        "rpc",
        [
          "method": "/shop.v1.OrderService/CreateOrder", "grpc_code": "OK",
          "duration_ms": .stringConvertible(1.25), "attempt": .stringConvertible(2),
          "peer": "ipv4:127.0.0.1:5000", "tags": ["a", "b"], "nested": ["k": "v"],
        ]))
    let fields = try object(line)
    #expect(fields["level"] as? String == "info")
    #expect(fields["logger"] as? String == "order-service")
    #expect(fields["message"] as? String == "rpc")
    #expect(fields["grpc_code"] as? String == "OK")
    #expect(fields["duration_ms"] as? Double == 1.25)
    #expect(fields["attempt"] as? Int == 2)
    #expect(fields["replica"] as? String == "b")
    #expect(fields["peer"] as? String == "ipv4:127.0.0.1:5000", "the event's metadata wins")
    #expect(fields["tags"] as? [String] == ["a", "b"])
    #expect((fields["nested"] as? [String: String]) == ["k": "v"])
    let time = try #require(fields["time"] as? String)
    #expect(time.hasSuffix("Z") && time.count == 24, "RFC 3339 with milliseconds: \(time)")
    // The fixed fields come first, then the metadata by name.
    let keys = line.split(separator: ",").compactMap { part -> String? in
      guard let colon = part.firstIndex(of: ":"), part.contains("\"") else { return nil }
      return String(part[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "{\""))
    }
    #expect(Array(keys.prefix(4)) == ["time", "level", "logger", "message"], "\(keys)")
    let metadataKeys = ["attempt", "duration_ms", "grpc_code", "method", "nested", "peer"]
    #expect(keys.filter(metadataKeys.contains) == metadataKeys, "\(keys)")
  }

  @Test func messagesAndValuesAreEscaped() throws {
    let handler = JSONLogHandler(label: "gateway \"edge\"")
    let message = "line one\nline \"two\"\t\\ é € \u{01} \u{2028}"
    let line = handler.line(for: event("\(message)", ["path": "/v1/users/\"x\"\n"]))
    #expect(!line.dropLast().contains("\n"), "one line: \(line)")
    let fields = try object(line)
    #expect(fields["message"] as? String == message)
    #expect(fields["logger"] as? String == "gateway \"edge\"")
    #expect(fields["path"] as? String == "/v1/users/\"x\"\n")
  }
}

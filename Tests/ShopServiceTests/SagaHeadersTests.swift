import Foundation
import Testing

@testable import OrderService

/// The trace headers a saga keeps with its row: written as a JSON object by hand, read back by
/// Foundation's parser, whatever the values hold.
@Suite struct SagaHeadersTests {
  @Test func headersSurviveTheRoundTrip() throws {
    let headers = [
      "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      "tracestate": "vendor=a\"b\\c,other=d/e",
      "x-odd": "line\nbreak\ttab\u{1}control é ✓",
    ]
    let text = OrderSaga.encode(headers)
    #expect(OrderSaga.decode(text) == headers)
    // Valid JSON, keys in order.
    let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: String]
    #expect(object == headers)
    #expect(text.hasPrefix(#"{"traceparent":"#))
    #expect(OrderSaga.encode([:]) == "" && OrderSaga.decode("") == [:])
  }
}

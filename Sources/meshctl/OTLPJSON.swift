import Foundation
import MeshDashboard
import MeshProtos
import SwiftProtobuf

/// OTLP's JSON encoding of an `ExportTraceServiceRequest`, as OpenTelemetry's collectors and
/// file exporters write it: protobuf's JSON mapping with lowerCamelCase names and enums as
/// integers, except that trace and span ids are hex strings, not base64.
enum OTLPJSON {
  /// The fields OTLP writes in hex.
  private static let idFields: Set<String> = ["traceId", "spanId", "parentSpanId"]

  /// One line of JSON.
  static func encode(_ request: OTLPExportRequest) throws -> String {
    var options = JSONEncodingOptions()
    options.alwaysPrintEnumsAsInts = true
    let json = try request.jsonUTF8Data(options: options)
    let object = try JSONSerialization.jsonObject(with: json)
    let converted = convertIDs(object) { base64 in
      Data(base64Encoded: base64).map(hex) ?? base64
    }
    let data = try JSONSerialization.data(
      withJSONObject: converted, options: [.withoutEscapingSlashes, .sortedKeys])
    return String(decoding: data, as: UTF8.self)
  }

  /// Reads one line of OTLP JSON; `line` names it in errors.
  static func decode(_ text: String, line: Int) throws -> OTLPExportRequest {
    let object: Any
    do {
      object = try JSONSerialization.jsonObject(with: Data(text.utf8))
    } catch {
      throw MeshctlFailure("line \(line): not JSON")
    }
    var badID: String?
    let converted = convertIDs(object) { hexText in
      guard let bytes = bytes(hex: hexText) else {
        badID = hexText
        return hexText
      }
      return Data(bytes).base64EncodedString()
    }
    if let badID { throw MeshctlFailure("line \(line): '\(badID)' is not a hex id") }
    do {
      let data = try JSONSerialization.data(withJSONObject: converted)
      var options = JSONDecodingOptions()
      options.ignoreUnknownFields = true
      return try OTLPExportRequest(jsonUTF8Data: data, options: options)
    } catch {
      throw MeshctlFailure("line \(line): not an OTLP ExportTraceServiceRequest: \(error)")
    }
  }

  private static func convertIDs(_ value: Any, _ convert: (String) -> String) -> Any {
    switch value {
    case let object as [String: Any]:
      var out: [String: Any] = [:]
      for (key, member) in object {
        if idFields.contains(key), let text = member as? String {
          out[key] = convert(text)
        } else {
          out[key] = convertIDs(member, convert)
        }
      }
      return out
    case let array as [Any]:
      return array.map { convertIDs($0, convert) }
    default:
      return value
    }
  }

  private static func bytes(hex: String) -> [UInt8]? {
    let digits = Array(hex.utf8)
    guard digits.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(digits.count / 2)
    for index in stride(from: 0, to: digits.count, by: 2) {
      guard let byte = UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16)
      else { return nil }
      out.append(byte)
    }
    return out
  }
}

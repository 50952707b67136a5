import ArgumentParser
import Foundation
import GRPCCore
import MeshServiceKit
import MeshTranscoding

/// `rpc call ADDRESS SERVICE/METHOD [-d DATA]`: invokes a method of any kind with JSON
/// requests and prints each response message as JSON.
struct Call: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Call a method with JSON request messages; print the responses as JSON.",
    discussion: """
      -d takes JSON text, @FILE or @- (standard input). Several request messages for a \
      client- or bidirectional-streaming method are given one after another: {"a":1} {"a":2}. \
      Without -d, a unary or server-streaming method gets one empty request.
      """)

  @Argument(help: "The server, HOST:PORT.") var address: String
  @Argument(help: "The method: package.Service/Method (or package.Service.Method).")
  var method: String
  @Option(name: .customShort("d"), help: "Request data: JSON, @FILE, or @- for standard input.")
  var data: String?
  @Option(help: "Seconds the whole call may take; sent to the server as its deadline.")
  var maxTime: Double?
  @Flag(help: "Print fields that hold their default values.") var emitDefaults = false
  @Flag(help: "Ignore request fields the message does not have.") var allowUnknownFields = false
  @Flag(name: .customShort("v"), help: "Print response headers, trailers and timing.")
  var verbose = false
  @OptionGroup var connection: ConnectionOptions

  func validate() throws {
    if let maxTime, maxTime <= 0 { throw ValidationError("--max-time must be positive") }
  }

  func run() async throws {
    let (serviceName, methodName) = try Self.split(method)
    let input = try Self.readInput(data)
    let metadata = try connection.metadata()
    let start = ContinuousClock.now
    try await connection.withClient(address) { client in
      var schema = try Schema(options: connection, client: client)
      let (service, pool) = try await schema.service(named: serviceName)
      guard let method = service.method(named: methodName) else {
        throw CLIFailure.other(
          "\(service.fullName) has no method \(methodName); it has: "
            + service.methods.map(\.name).joined(separator: ", "))
      }
      let requests = try Self.encodeRequests(
        input, method: method, pool: pool, dataGiven: data != nil,
        allowUnknownFields: allowUnknownFields)
      let request = StreamingClientRequest<[UInt8]>(metadata: metadata) { writer in
        for message in requests { try await writer.write(message) }
      }
      if verbose {
        print("Calling \(method.fullPath) with \(requests.count) request message(s)\n")
      }
      let counts: Int
      do {
        counts = try await client.bidirectionalStreaming(
          request: request,
          descriptor: MethodDescriptor(
            fullyQualifiedService: service.fullName, method: method.name),
          serializer: RawSerializer(), deserializer: RawDeserializer(),
          options: connection.callOptions(timeout: maxTime)
        ) { response in
          try await printResponse(response, method: method, pool: pool, start: start)
        }
      } catch let error as RPCError {
        // Failures outside the response stream: the deadline, a cancelled request stream.
        throw failure(error)
      }
      if verbose {
        let elapsed = ContinuousClock.now - start
        print(
          """
          \nSent \(requests.count) request(s) and received \(counts) response(s) in \
          \(Self.format(elapsed))
          """
        )
      }
    }
  }

  /// Prints messages as they arrive; returns how many there were. A non-OK status becomes
  /// exit status 64 + code.
  private func printResponse(
    _ response: StreamingClientResponse<[UInt8]>, method: MeshTranscoding.MethodDescriptor,
    pool: DescriptorPool, start: ContinuousClock.Instant
  ) async throws -> Int {
    let contents: StreamingClientResponse<[UInt8]>.Contents
    switch response.accepted {
    case .success(let accepted): contents = accepted
    case .failure(let error): throw failure(error)
    }
    if verbose {
      print("Response headers received:")
      printMetadata(contents.metadata)
      print()
    }
    var count = 0
    let encoding = JSONEncodingOptions(emitDefaults: emitDefaults)
    do {
      for try await part in contents.bodyParts {
        switch part {
        case .message(let bytes):
          count += 1
          let message: DynamicMessage
          do {
            message = try DynamicMessage(descriptor: method.outputType, serializedBytes: bytes)
          } catch {
            throw CLIFailure.other(
              "response \(count) is not a valid \(method.outputType.fullName): \(error)")
          }
          if verbose { print("Response contents:") }
          print(try message.jsonString(pool: pool, options: encoding))
          // Each message as it arrives, even into a pipe (`rpc … | jq`), not when the call ends.
          fflush(nil)
        case .trailingMetadata(let trailers):
          if verbose {
            print("\nResponse trailers received:")
            printMetadata(trailers)
          }
        }
      }
    } catch let error as RPCError {
      throw failure(error)
    }
    return count
  }

  private func failure(_ error: RPCError) -> CLIFailure {
    if verbose, !error.metadata.isEmpty {
      print("Response trailers received:")
      printMetadata(error.metadata)
    }
    return CLIFailure(error)
  }

  private func printMetadata(_ metadata: Metadata) {
    if metadata.isEmpty { print("(empty)") }
    for (key, value) in metadata {
      switch value {
      case .string(let text): print("\(key): \(text)")
      case .binary(let bytes): print("\(key): \(Data(bytes).base64EncodedString())")
      }
    }
  }

  /// Reads and checks the request messages against the method's input type.
  static func encodeRequests(
    _ input: [JSONValue], method: MeshTranscoding.MethodDescriptor, pool: DescriptorPool,
    dataGiven: Bool, allowUnknownFields: Bool
  ) throws -> [[UInt8]] {
    var values = input
    if !dataGiven, !method.clientStreaming { values = [.object([])] }
    if !method.clientStreaming, values.count != 1 {
      throw CLIFailure.other(
        "\(method.fullPath) takes exactly one request message; \(values.count) were given")
    }
    let options = JSONDecodingOptions(ignoreUnknownFields: allowUnknownFields)
    return try values.enumerated().map { index, value in
      do {
        return try DynamicMessage(
          descriptor: method.inputType, json: value, pool: pool, options: options
        ).serializedBytes()
      } catch {
        let which = values.count > 1 ? "request \(index + 1)" : "request"
        throw CLIFailure.other("\(which) does not fit \(method.inputType.fullName): \(error)")
      }
    }
  }

  static func readInput(_ data: String?) throws -> [JSONValue] {
    guard let data else { return [] }
    let text: String
    if data == "@-" {
      text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
    } else if data.hasPrefix("@") {
      let path = String(data.dropFirst())
      guard let contents = FileManager.default.contents(atPath: path) else {
        throw CLIFailure.other("cannot read request data from \(path)")
      }
      text = String(decoding: contents, as: UTF8.self)
    } else {
      text = data
    }
    do {
      return try JSONParser.parseStream(text)
    } catch {
      throw CLIFailure.other("request data is not JSON: \(error)")
    }
  }

  static func split(_ method: String) throws -> (String, String) {
    let trimmed = method.hasPrefix("/") ? String(method.dropFirst()) : method
    if let slash = trimmed.lastIndex(of: "/") {
      let service = String(trimmed[..<slash])
      let name = String(trimmed[trimmed.index(after: slash)...])
      if !service.isEmpty, !name.isEmpty { return (service, name) }
    } else if let dot = trimmed.lastIndex(of: ".") {
      let service = String(trimmed[..<dot])
      let name = String(trimmed[trimmed.index(after: dot)...])
      if !service.isEmpty, !name.isEmpty { return (service, name) }
    }
    throw CLIFailure.usage("\"\(method)\" is not a method; write package.Service/Method")
  }

  private static func format(_ duration: Duration) -> String {
    let millis =
      Double(duration.components.seconds) * 1000
      + Double(duration.components.attoseconds) / 1e15
    return String(format: "%.1f ms", millis)
  }
}

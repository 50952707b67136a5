import GRPCCore
import GRPCNIOTransportHTTP2
import MeshProtos
import MeshTranscoding
import SwiftProtobuf

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// Asks a server for its schema by gRPC server reflection: v1 first, then v1alpha for servers
/// that only speak that (Python's grpcio-reflection, older Go and Java servers), as grpcurl
/// does. The two versions' messages are identical on the wire, so one client speaks both and
/// only the method path differs. `rpc` reads schemas with it; a sidecar reads its app's
/// methods and their idempotency with it.
public struct ReflectionClient {
  typealias Request = Grpc_Reflection_V1_ServerReflectionRequest
  typealias Response = Grpc_Reflection_V1_ServerReflectionResponse

  let client: GRPCClient<HTTP2ClientTransport.Posix>
  let metadata: Metadata
  let options: CallOptions
  private var useV1Alpha = false

  public init(
    client: GRPCClient<HTTP2ClientTransport.Posix>, metadata: Metadata = [:],
    options: CallOptions = .defaults
  ) {
    self.client = client
    self.metadata = metadata
    self.options = options
  }

  /// The names of the services the server lists.
  public mutating func listServices() async throws -> [String] {
    let response = try await ask(.with { $0.listServices = "*" })
    guard case .listServicesResponse(let list)? = response.messageResponse else {
      throw ReflectionError("the server's reflection service did not list its services")
    }
    return list.service.map(\.name).sorted()
  }

  /// A pool holding the file that declares `symbol` and everything it imports; nil when the
  /// server does not know the symbol.
  public mutating func pool(containing symbol: String) async throws -> DescriptorPool? {
    guard let files = try await files(containing: symbol) else { return nil }
    do {
      return try DescriptorPool(files: files)
    } catch {
      throw ReflectionError("the server's descriptors are unusable: \(error)")
    }
  }

  /// The file that declares `symbol` and everything it imports; nil when the server does not
  /// know the symbol.
  public mutating func files(
    containing symbol: String
  ) async throws -> [Google_Protobuf_FileDescriptorProto]? {
    let response = try await ask(.with { $0.fileContainingSymbol = symbol })
    if case .errorResponse(let error)? = response.messageResponse {
      if error.errorCode == Int32(RPCError.Code.notFound.rawValue) { return nil }
      throw ReflectionError("reflection: \(error.errorMessage)")
    }
    var files = try Self.files(in: response)
    // Some servers send only the requested file; fetch whatever imports are missing.
    var known = Set(files.map(\.name))
    var missing = files.flatMap(\.dependency).filter { !known.contains($0) }
    while let name = missing.popLast() {
      guard !known.contains(name) else { continue }
      let answer = try await ask(.with { $0.fileByFilename = name })
      if case .errorResponse(let error)? = answer.messageResponse {
        throw ReflectionError("reflection cannot provide \(name): \(error.errorMessage)")
      }
      for file in try Self.files(in: answer) where known.insert(file.name).inserted {
        files.append(file)
        missing.append(contentsOf: file.dependency)
      }
    }
    return files
  }

  private static func files(in response: Response) throws -> [Google_Protobuf_FileDescriptorProto] {
    guard case .fileDescriptorResponse(let answer)? = response.messageResponse else {
      throw ReflectionError("reflection answered without file descriptors")
    }
    do {
      return try answer.fileDescriptorProto.map {
        try Google_Protobuf_FileDescriptorProto(serializedBytes: $0)
      }
    } catch {
      throw ReflectionError("reflection sent a malformed file descriptor: \(error)")
    }
  }

  private mutating func ask(_ request: Request) async throws -> Response {
    if !useV1Alpha {
      do {
        return try await ask(request, service: "grpc.reflection.v1.ServerReflection")
      } catch let error as RPCError where error.code == .unimplemented {
        useV1Alpha = true
      }
    }
    do {
      return try await ask(request, service: "grpc.reflection.v1alpha.ServerReflection")
    } catch let error as RPCError where error.code == .unimplemented {
      throw ReflectionError(
        "the server does not support reflection (v1 or v1alpha); give its schema with --protoset")
    }
  }

  private func ask(_ request: Request, service: String) async throws -> Response {
    let bytes: [UInt8] = try request.serializedBytes()
    let streaming = StreamingClientRequest<[UInt8]>(metadata: metadata) { writer in
      try await writer.write(bytes)
    }
    let answer = try await client.bidirectionalStreaming(
      request: streaming,
      descriptor: MethodDescriptor(fullyQualifiedService: service, method: "ServerReflectionInfo"),
      serializer: RawSerializer(), deserializer: RawDeserializer(), options: options
    ) { response -> [UInt8]? in
      for try await message in response.messages { return message }
      return nil
    }
    guard let answer else { throw ReflectionError("reflection answered nothing") }
    do {
      return try Response(serializedBytes: answer)
    } catch {
      throw ReflectionError("reflection sent a malformed answer: \(error)")
    }
  }
}

/// Why a server's schema could not be read by reflection.
public struct ReflectionError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

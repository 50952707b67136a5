import GRPCCore
import MeshProtos
import MeshTranscoding
import SwiftProtobuf

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// gRPC server reflection (`grpc.reflection.v1`) answered from a descriptor pool: the files
/// declaring the hosted services, their types and everything they import.
struct ReflectionService: Grpc_Reflection_V1_ServerReflection.SimpleServiceProtocol {
  typealias Request = Grpc_Reflection_V1_ServerReflectionRequest
  typealias Response = Grpc_Reflection_V1_ServerReflectionResponse

  let pool: DescriptorPool
  /// The fully qualified names of the services the server exposes, sorted.
  let serviceNames: [String]

  func serverReflectionInfo(
    request: RPCAsyncSequence<Request, any Error>, response: RPCWriter<Response>,
    context: ServerContext
  ) async throws {
    for try await message in request {
      try await response.write(answer(message))
    }
  }

  /// One answer per request; a lookup that finds nothing is an `error_response`, not a failed
  /// stream, as the protocol specifies.
  func answer(_ request: Request) -> Response {
    var response = Response()
    response.validHost = request.host
    response.originalRequest = request
    switch request.messageRequest {
    case .fileByFilename(let name):
      response.messageResponse = files(pool.file(named: name) != nil ? name : nil, for: name)
    case .fileContainingSymbol(let symbol):
      response.messageResponse = files(pool.fileName(containingSymbol: symbol), for: symbol)
    case .fileContainingExtension(let ext):
      response.messageResponse = files(
        pool.fileName(containingExtension: ext.containingType, number: ext.extensionNumber),
        for: "extension \(ext.extensionNumber) of \(ext.containingType)")
    case .allExtensionNumbersOfType(let type):
      if pool.message(named: type) != nil {
        response.allExtensionNumbersResponse = .with {
          $0.baseTypeName = type
          $0.extensionNumber = pool.extensionNumbers(of: type)
        }
      } else {
        response.errorResponse = error(.notFound, "unknown type \(type)")
      }
    case .listServices:
      response.listServicesResponse = .with {
        $0.service = serviceNames.map { name in .with { $0.name = name } }
      }
    case nil:
      response.errorResponse = error(.invalidArgument, "the request names nothing to look up")
    }
    return response
  }

  private func files(_ fileName: String?, for what: String) -> Response.OneOf_MessageResponse {
    guard let fileName else { return .errorResponse(error(.notFound, "\(what) not found")) }
    do {
      let serialized = try pool.fileWithDependencies(fileName).map {
        try $0.serializedBytes() as [UInt8]
      }
      return .fileDescriptorResponse(.with { $0.fileDescriptorProto = serialized.map { Data($0) } })
    } catch {
      return .errorResponse(self.error(.internalError, "cannot serialize \(fileName): \(error)"))
    }
  }

  private func error(_ code: RPCError.Code, _ message: String) -> Grpc_Reflection_V1_ErrorResponse {
    .with {
      $0.errorCode = Int32(code.rawValue)
      $0.errorMessage = message
    }
  }
}

/// `grpc.reflection.v1alpha`, for older clients (grpcurl before 1.8.8, Python's
/// grpcio-reflection). Its messages are the same as v1's on the wire, field for field, so each
/// request is re-read as v1 and each v1 answer re-read as v1alpha rather than written twice.
struct ReflectionServiceV1Alpha: Grpc_Reflection_V1alpha_ServerReflection.SimpleServiceProtocol {
  let v1: ReflectionService

  func serverReflectionInfo(
    request: RPCAsyncSequence<Grpc_Reflection_V1alpha_ServerReflectionRequest, any Error>,
    response: RPCWriter<Grpc_Reflection_V1alpha_ServerReflectionResponse>,
    context: ServerContext
  ) async throws {
    for try await message in request {
      let asV1 = try ReflectionService.Request(
        serializedBytes: message.serializedBytes() as [UInt8])
      let answer = v1.answer(asV1)
      try await response.write(
        try Grpc_Reflection_V1alpha_ServerReflectionResponse(
          serializedBytes: answer.serializedBytes() as [UInt8]))
    }
  }
}

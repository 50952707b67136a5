import Foundation
import GRPCCore
import GRPCProtobuf
import MeshIdentity
import MeshProtos
import MeshTracing

/// OTLP's `TraceService`: the mesh's default collector. Any workload of the mesh may export
/// (the listener has verified its certificate); what it sends is stored in the `TraceStore`
/// straight from its encoding: the request is never decoded into messages.
public struct CollectorService: RegistrableRPCService {
  let store: TraceStore

  public init(store: TraceStore) { self.store = store }

  public func registerMethods<Transport: ServerTransport>(
    with router: inout RPCRouter<Transport>
  ) {
    router.registerHandler(
      forMethod: Opentelemetry_Proto_Collector_Trace_V1_TraceService.Method.Export.descriptor,
      deserializer: EncodedRequest(),
      serializer: ProtobufSerializer<
        Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse
      >(),
      handler: { request, context in
        let response = try await export(
          request: try await ServerRequest(stream: request), context: context)
        return StreamingServerResponse(single: ServerResponse(message: response))
      })
  }

  func export(
    request: ServerRequest<[UInt8]>, context: ServerContext
  ) async throws
    -> Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse
  {
    guard ControlContext.caller(context) != nil else {
      throw RPCError(code: .unauthenticated, message: "exporting spans needs a mesh certificate")
    }
    let (rejected, reason): (Int, String?)
    do {
      (rejected, reason) = try store.store(encoded: request.message)
    } catch let error as OTLPReader.Malformed {
      throw RPCError(
        code: .invalidArgument, message: "not an ExportTraceServiceRequest: \(error)")
    }
    var response = Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse()
    if rejected > 0 {
      response.partialSuccess.rejectedSpans = Int64(rejected)
      response.partialSuccess.errorMessage = reason ?? ""
    }
    return response
  }

  /// A request's bytes as they came.
  struct EncodedRequest: MessageDeserializer {
    func deserialize<Bytes: GRPCContiguousBytes>(_ bytes: Bytes) throws -> [UInt8] {
      bytes.withUnsafeBytes { Array($0) }
    }
  }
}

/// `trellis.mesh.v1.Traces`: what `meshctl trace` reads. Operator identities only.
public struct TracesService: Trellis_Mesh_V1_Traces.ServiceProtocol {
  let store: TraceStore

  public init(store: TraceStore) { self.store = store }

  private func requireOperator(_ context: ServerContext) throws {
    guard let caller = ControlContext.caller(context) else {
      throw RPCError(
        code: .unauthenticated, message: "reading traces needs an operator certificate")
    }
    guard caller.path.hasPrefix("/operator/") else {
      throw RPCError(
        code: .permissionDenied, message: "\(caller) is not an operator; traces are for operators")
    }
  }

  public func listTraces(
    request: ServerRequest<Trellis_Mesh_V1_ListTracesRequest>, context: ServerContext
  ) async throws -> ServerResponse<Trellis_Mesh_V1_ListTracesResponse> {
    try requireOperator(context)
    var response = Trellis_Mesh_V1_ListTracesResponse()
    response.traces = try store.list(request.message.filter)
    response.storedSpans = Int64(try store.storedSpans)
    response.maximumSpans = Int64(store.retention.maximumSpans)
    return ServerResponse(message: response)
  }

  public func getTraces(
    request: ServerRequest<Trellis_Mesh_V1_GetTracesRequest>, context: ServerContext
  ) async throws -> StreamingServerResponse<OTLPExportRequest> {
    try requireOperator(context)
    var ids: [Data] = []
    for text in request.message.traceIds {
      guard let id = Self.traceID(text) else {
        throw RPCError(
          code: .invalidArgument, message: "'\(text)' is not a trace id (32 hex digits)")
      }
      ids.append(id)
    }
    let traces = try store.traces(ids: ids, filter: request.message.filter)
    if !ids.isEmpty, traces.isEmpty {
      throw RPCError(
        code: .notFound,
        message: ids.count == 1
          ? "no trace \(request.message.traceIds[0]) is stored (it was not sampled, or is past retention)"
          : "none of these traces is stored")
    }
    return StreamingServerResponse { writer in
      try await writer.write(contentsOf: traces)
      return [:]
    }
  }

  static func traceID(_ text: String) -> Data? {
    guard text.utf8.count == 32, let id = TraceID(hex: text.lowercased()) else { return nil }
    return Data(id.bytes)
  }
}

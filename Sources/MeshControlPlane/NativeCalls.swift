import Foundation
import GRPCCore
import MeshIdentity
import MeshProtos
import MeshProxy
import MeshTracing
import NIOCore
import NIOHPACK
import X509

/// What the front serves itself (`ControlFront`): the calls every sidecar keeps making on
/// connections of their own — its config stream, its telemetry stream and its span exports.
struct NativeCalls: Sendable {
  static let subscribe =
    "/" + Trellis_Mesh_V1_Config.Method.Subscribe.descriptor.fullyQualifiedMethod
  static let report =
    "/" + Trellis_Mesh_V1_Telemetry.Method.Report.descriptor.fullyQualifiedMethod
  static let export =
    "/"
    + Opentelemetry_Proto_Collector_Trace_V1_TraceService.Method.Export.descriptor
    .fullyQualifiedMethod
  static let paths: Set<String> = [subscribe, report, export]

  let control: ControlContext
  let telemetry: TelemetryHub
  let traces: TraceStore
}

/// The calls of one connection the front serves itself: those of `NativeCalls`; any other
/// method on such a connection is UNIMPLEMENTED (a connection whose first call is one of them
/// is a sidecar's link that makes no other).
final class NativeConnection: GRPCStreamService {
  let calls: NativeCalls
  let leaf: Certificate?
  let caller: SPIFFEID?

  init(calls: NativeCalls, leaf: Certificate?) {
    self.calls = calls
    self.leaf = leaf
    caller = leaf.flatMap { try? SVIDValidator.leafIdentity($0) }
  }

  func open(
    path: String, headers: HPACKHeaders, call: GRPCStreamCall
  ) -> (any GRPCStreamCallHandler)? {
    switch path {
    case NativeCalls.subscribe: NativeConfigStream(control: calls.control, leaf: leaf, call: call)
    case NativeCalls.report: NativeTelemetryStream(hub: calls.telemetry, caller: caller, call: call)
    case NativeCalls.export: NativeSpanExport(store: calls.traces, caller: caller, call: call)
    default: nil
    }
  }
}

/// A sidecar's telemetry stream (`TelemetryService.report`, served on the front): reports in,
/// the taps open on its service out.
final class NativeTelemetryStream: GRPCStreamCallHandler {
  private let hub: TelemetryHub
  private let call: GRPCStreamCall
  private let service: String?
  private var id: UUID?

  init(hub: TelemetryHub, caller: SPIFFEID?, call: GRPCStreamCall) {
    self.hub = hub
    self.call = call
    guard let caller, caller.path.hasPrefix("/svc/") else {
      service = nil
      call.finish(
        code: RPCError.Code.permissionDenied.rawValue,
        message: "only a workload's sidecar reports telemetry")
      return
    }
    service = String(caller.path.dropFirst("/svc/".count))
  }

  func received(_ message: ByteBuffer) {
    guard let service else { return }
    let report: Trellis_Mesh_V1_TelemetryReport
    do {
      report = try Trellis_Mesh_V1_TelemetryReport(serializedBytes: Array(buffer: message))
    } catch {
      call.finish(
        code: RPCError.Code.invalidArgument.rawValue,
        message: "a TelemetryReport that does not parse")
      return
    }
    if id == nil {
      let loop = call.eventLoop
      let bound = NIOLoopBound(call, eventLoop: loop)
      id = hub.connect(service: service, instance: report.instance) { control in
        guard let bytes = try? control.serializedBytes() as [UInt8] else { return }
        loop.execute { bound.value.send(ByteBuffer(bytes: bytes)) }
      }
    }
    hub.receive(report, from: id!)
  }

  func receivedEnd() { call.finish(code: 0) }
  func drained() {}

  func ended() {
    if let id { hub.disconnect(id) }
    id = nil
  }
}

/// OTLP's `Export` (`CollectorService.export`, served on the front): the request's bytes are
/// stored as they came, in a task (the store writes to disk), and answered.
final class NativeSpanExport: GRPCStreamCallHandler {
  private let store: TraceStore
  private let call: GRPCStreamCall
  private var request: [UInt8]?
  private var over = false

  init(store: TraceStore, caller: SPIFFEID?, call: GRPCStreamCall) {
    self.store = store
    self.call = call
    if caller == nil {
      call.finish(
        code: RPCError.Code.unauthenticated.rawValue,
        message: "exporting spans needs a mesh certificate")
    }
  }

  func received(_ message: ByteBuffer) {
    guard request == nil else {
      call.finish(code: RPCError.Code.invalidArgument.rawValue, message: "Export takes one request")
      return
    }
    request = Array(buffer: message)
  }

  func receivedEnd() {
    guard !over else { return }
    guard let request else {
      call.finish(code: RPCError.Code.invalidArgument.rawValue, message: "Export takes one request")
      return
    }
    let (store, loop) = (store, call.eventLoop)
    let bound = NIOLoopBound(call, eventLoop: loop)
    Task {
      let answer: Result<[UInt8], RPCError>
      do {
        let (rejected, reason) = try store.store(encoded: request)
        var response = Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceResponse()
        if rejected > 0 {
          response.partialSuccess.rejectedSpans = Int64(rejected)
          response.partialSuccess.errorMessage = reason ?? ""
        }
        answer = .success(try response.serializedBytes())
      } catch let error as OTLPReader.Malformed {
        answer = .failure(
          RPCError(code: .invalidArgument, message: "not an ExportTraceServiceRequest: \(error)"))
      } catch {
        answer = .failure(
          RPCError(code: .internalError, message: "cannot store the spans: \(error)"))
      }
      loop.execute {
        let call = bound.value
        switch answer {
        case .success(let bytes):
          call.send(ByteBuffer(bytes: bytes))
          call.finish(code: 0)
        case .failure(let error):
          call.finish(code: error.code.rawValue, message: error.message)
        }
      }
    }
  }

  func drained() {}
  func ended() { over = true }
}

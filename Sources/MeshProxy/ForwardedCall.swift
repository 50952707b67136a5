import NIOCore
import NIOHPACK

/// One call crossing the proxy: the caller's stream joined to the stream towards its
/// destination. Everything here runs on the event loop both connections share.
final class ForwardedCall {
  let downstream: ForwardingConnection
  let downstreamStream: UInt32
  let start = NIODeadline.now()
  var metrics: SidecarMetrics?
  /// The place the call holds in its service's circuit breaker, given back when it ends.
  var limit: ConcurrencyLimit?
  var direction = ""
  var service = ""
  var method = ""
  /// The call's gRPC status, once seen.
  private var code: Substring?
  var upstream: ForwardingConnection?
  var upstreamStream: UInt32?

  private var requestMessages = MessageFramer()
  private var responseMessages = MessageFramer()

  /// Request frames that arrived before the upstream stream was open, in order.
  private enum Held {
    case headers(HPACKHeaders, endStream: Bool)
    case data(ByteBuffer, endStream: Bool, flow: Int)
  }
  private var held: [Held] = []

  var requestEnded = false
  /// Response headers have been forwarded to the caller: the call can no longer be answered
  /// by the proxy with a Trailers-Only status, only ended.
  private var responseStarted = false
  private var responseEnded = false
  private var downstreamClosed = false
  private var upstreamClosed = false

  init(downstream: ForwardingConnection, stream: UInt32) {
    self.downstream = downstream
    self.downstreamStream = stream
  }

  /// HEADERS from one side go to the other: response headers, trailers, or request trailers.
  func forwardHeaders(_ headers: HPACKHeaders, endStream: Bool, from side: ForwardingConnection) {
    if side === downstream {
      if endStream { requestEnded = true }
      guard !upstreamClosed else { return }
      guard let upstream, let upstreamStream else {
        held.append(.headers(headers, endStream: endStream))
        return
      }
      upstream.sendHeaders(headers, endStream: endStream, on: upstreamStream)
    } else if !downstreamClosed {
      if endStream {
        responseEnded = true
        code = headers.first(name: "grpc-status").map { Substring($0) }
      }
      responseStarted = true
      downstream.sendHeaders(headers, endStream: endStream, on: downstreamStream)
    }
  }

  /// DATA from one side goes to the other; its window returns to the sender once handed on.
  func forwardData(
    _ data: ByteBuffer, endStream: Bool, flow: Int, from side: ForwardingConnection
  ) {
    if side === downstream {
      if endStream { requestEnded = true }
      guard !upstreamClosed else {
        side.returnCredit(flow)
        return
      }
      if let size = requestMessages.scan(data, limit: MessageFramer.defaultLimit) {
        side.returnCredit(flow)
        refuseOversized(size, direction: "request")
        return
      }
      guard let upstream, let upstreamStream else {
        held.append(.data(data, endStream: endStream, flow: flow))
        return
      }
      upstream.sendData(
        data, endStream: endStream, on: upstreamStream, flow: flow, source: side, call: self)
    } else {
      guard !responseEnded, !downstreamClosed else {
        side.returnCredit(flow)
        return
      }
      if let size = responseMessages.scan(data, limit: MessageFramer.defaultLimit) {
        side.returnCredit(flow)
        refuseOversized(size, direction: "response")
        return
      }
      responseStarted = true
      if endStream { responseEnded = true }
      downstream.sendData(
        data, endStream: endStream, on: downstreamStream, flow: flow, source: side, call: self)
    }
  }

  /// A forwarded DATA frame has left (or was dropped): its bytes go back to the side it came
  /// from — to the stream too while that stream may still send.
  func handedOn(_ flow: Int, from source: ForwardingConnection) {
    if source === downstream {
      source.returnCredit(flow, stream: downstreamStream)
    } else if let upstreamStream {
      source.returnCredit(flow, stream: upstreamStream)
    } else {
      source.returnCredit(flow)
    }
  }

  /// A message over the limit ends the call: RESOURCE_EXHAUSTED to the caller, a reset
  /// upstream, and none of the message forwarded.
  private func refuseOversized(_ size: Int, direction: String) {
    cancelUpstream(.cancel)
    answer(
      .resourceExhausted,
      "\(direction) message of \(size) bytes exceeds the limit of \(MessageFramer.defaultLimit) bytes"
    )
  }

  private func cancelUpstream(_ code: H2Error) {
    let wasClosed = upstreamClosed
    upstreamClosed = true
    dropHeld()
    if !wasClosed, let upstream, let upstreamStream {
      upstream.resetStream(upstreamStream, code)
    }
  }

  private func dropHeld() {
    for entry in held {
      if case .data(_, _, let flow) = entry { downstream.returnCredit(flow) }
    }
    held = []
  }

  /// The upstream stream now exists: frames held meanwhile follow the HEADERS.
  func releaseHeld() {
    let frames = held
    held = []
    for entry in frames {
      switch entry {
      case .headers(let headers, let endStream):
        forwardHeaders(headers, endStream: endStream, from: downstream)
      case .data(let data, let endStream, let flow):
        guard !upstreamClosed, let upstream, let upstreamStream else {
          downstream.returnCredit(flow)
          continue
        }
        upstream.sendData(
          data, endStream: endStream, on: upstreamStream, flow: flow, source: downstream,
          call: self)
      }
    }
  }

  /// Answers the caller with a gRPC status of the proxy's own (Trailers-Only), and asks it to
  /// stop sending if it has not finished.
  func answer(_ status: ProxyStatus, _ message: String) {
    guard !downstreamClosed, !responseEnded else { return }
    code = Substring(String(status.rawValue))
    let headers =
      responseStarted ? trailers(status, message) : trailersOnly(status, message)
    responseStarted = true
    responseEnded = true
    downstream.sendHeaders(headers, endStream: true, on: downstreamStream)
    if !requestEnded { downstream.resetStream(downstreamStream, .noError) }
  }

  /// A reset from one side resets the other with the same code.
  func reset(_ code: H2Error, from side: ForwardingConnection) {
    if side === downstream {
      downstreamClosed = true
      cancelUpstream(code)
    } else {
      upstreamClosed = true
      if !downstreamClosed { downstream.resetStream(downstreamStream, code) }
    }
  }

  /// A stream of this call has closed on `side`. A stream that ended in error (a reset either
  /// way, or a stream error found here) ends the other half too.
  func closed(on side: ForwardingConnection, reason: H2Error?) {
    if side === downstream {
      let wasClosed = downstreamClosed
      downstreamClosed = true
      record(reset: reason != nil)
      if reason != nil, !wasClosed { cancelUpstream(.cancel) }
    } else {
      let wasClosed = upstreamClosed
      upstreamClosed = true
      if let reason, !wasClosed, !responseEnded {
        answer(.unavailable, "stream to \(side.endpointName) closed (\(reason))")
      }
    }
  }

  /// Counts the call once, when the caller's stream ends.
  private func record(reset: Bool) {
    limit?.release()
    limit = nil
    guard let metrics else { return }
    self.metrics = nil
    let name = code.map(grpcCodeName) ?? (reset ? "CANCELLED" : "UNKNOWN")
    let seconds = Double((NIODeadline.now() - start).nanoseconds) / 1e9
    metrics.recordCall(
      direction: direction, service: service, method: method, code: name, seconds: seconds)
  }

  /// The upstream connection could not carry this call.
  func upstreamFailed(_ message: String) {
    upstreamClosed = true
    dropHeld()
    answer(.unavailable, message)
  }

  func connectionLost(_ side: ForwardingConnection, reason: String) {
    if side === downstream {
      if !downstreamClosed { record(reset: true) }
      downstreamClosed = true
      cancelUpstream(.cancel)
    } else if !upstreamClosed {
      upstreamClosed = true
      if responseEnded {
        if !downstreamClosed { downstream.resetStream(downstreamStream, .cancel) }
      } else {
        answer(.unavailable, reason)
      }
    }
  }
}

/// Trailers (after response headers) carrying a status of the proxy's own.
func trailers(_ status: ProxyStatus, _ message: String) -> HPACKHeaders {
  [
    "grpc-status": "\(status.rawValue)", "grpc-message": percentEncodeGRPCMessage(message),
  ]
}

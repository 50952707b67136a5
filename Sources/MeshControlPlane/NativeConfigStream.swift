import Foundation
import GRPCCore
import MeshIdentity
import MeshProtos
import MeshProxy
import NIOCore
import NIOHPACK
import Synchronization
import X509

/// One sidecar's config stream, as `ConfigService.subscribe` serves it, but driven by events on
/// its connection's event loop instead of a task: the hub wakes it (`ConfigWaker`) and it
/// writes a snapshot; each message from the sidecar (the hello, ACKs, NACKs, registrations)
/// is handled in order, the store's calls in a task only while one runs.
final class NativeConfigStream: GRPCStreamCallHandler {
  private let control: ControlContext
  private let call: GRPCStreamCall
  private let caller: SPIFFEID?
  private let leaf: Certificate?
  private let id = UUID()
  private let wakeScheduled = WakeFlag()
  /// The node, once the hello has subscribed the stream.
  private var node: String?
  /// Nonces sent and the version each carried, to read NACKs by.
  private var sent: [String: Int64] = [:]
  /// Messages not handled yet, in order; one is being handled while `busy`.
  private var queue: [Trellis_Mesh_V1_SubscribeRequest] = []
  private var busy = false
  private var peerEnded = false
  private var over = false
  /// A snapshot is due once what was sent has gone out.
  private var snapshotDue = false
  /// The issued certificate last looked up, by serial: ACKs repeat it.
  private var issued: (serial: String, record: IssuedCertificate?)?
  private var age: Scheduled<Void>?

  init(control: ControlContext, leaf: Certificate?, call: GRPCStreamCall) {
    self.control = control
    self.call = call
    self.leaf = leaf
    caller = leaf.flatMap { try? SVIDValidator.leafIdentity($0) }
    guard caller != nil else {
      call.finish(
        code: RPCError.Code.unauthenticated.rawValue,
        message: "subscribing needs a workload certificate")
      return
    }
    guard control.hub.streams < control.maximumConfigStreams else {
      call.finish(
        code: RPCError.Code.resourceExhausted.rawValue,
        message: """
          this control plane serves its limit of \(control.maximumConfigStreams) config streams: \
          subscribe at another replica
          """)
      return
    }
    // The stream ends after its age (with jitter); its sidecar subscribes again at a replica
    // of its choosing, so load spreads again over replicas that came back.
    let bound = NIOLoopBound(self, eventLoop: call.eventLoop)
    age = call.eventLoop.scheduleTask(
      in: TimeAmount(control.configStreamAge * Double.random(in: 0.8...1.2))
    ) {
      bound.value.call.finish(code: 0)
    }
  }

  // MARK: From the sidecar

  func received(_ message: ByteBuffer) {
    guard !over else { return }
    do {
      queue.append(try Trellis_Mesh_V1_SubscribeRequest(serializedBytes: Array(buffer: message)))
    } catch {
      call.finish(
        code: RPCError.Code.invalidArgument.rawValue,
        message: "a SubscribeRequest that does not parse: \(error)")
      return
    }
    handleNext()
  }

  func receivedEnd() {
    peerEnded = true
    handleNext()
  }

  func ended() {
    over = true
    age?.cancel()
    age = nil
    if node != nil { control.hub.unsubscribe(id: id) }
  }

  func drained() {
    if snapshotDue { writeSnapshot() }
  }

  private func handleNext() {
    guard !busy, !over else { return }
    guard !queue.isEmpty else {
      if peerEnded { call.finish(code: 0) }
      return
    }
    var next = queue.removeFirst()
    guard let caller else { return }
    let hello = node == nil
    if hello, next.certificateSerial.isEmpty, let leaf {
      next.certificateSerial = leaf.serialHex  // a sidecar that does not report it
    }
    let message = next
    // What needs the store: a serial not looked up yet, and a registration.
    let serialKnown =
      message.certificateSerial.isEmpty || issued?.serial == message.certificateSerial
    if serialKnown, !message.hasRegistration {
      take(message, issued: message.certificateSerial.isEmpty ? nil : issued?.record)
      handleNext()
      return
    }
    busy = true
    let bound = NIOLoopBound(self, eventLoop: call.eventLoop)
    let loop = call.eventLoop
    let (store, hub) = (control.store, control.hub)
    let known = issued
    Task {
      let lookup: Result<IssuedCertificate?, any Error>
      if serialKnown {
        lookup = .success(known?.record)
      } else {
        do {
          lookup = .success(
            try await ConfigService.issued(message.certificateSerial, caller, store))
        } catch {
          lookup = .failure(error)
        }
      }
      // Back on the loop the message is taken (a hello subscribes the stream), before its
      // registration is stored, as on grpc-swift's path.
      let registerAs = try? await loop.submit { () -> String? in
        let stream = bound.value
        guard !stream.over else { return nil }
        switch lookup {
        case .success(let record):
          if !message.certificateSerial.isEmpty {
            stream.issued = (message.certificateSerial, record)
          }
          stream.take(message, issued: record)
          return message.hasRegistration ? stream.node : nil
        case .failure(let error):
          stream.fail(error)
          return nil
        }
      }.get()
      let registration: Result<Void, any Error>
      if let node = registerAs ?? nil {
        do {
          try await ConfigService.register(
            message.registration, node: node, caller: caller, hub, store)
          registration = .success(())
        } catch {
          registration = .failure(error)
        }
      } else {
        registration = .success(())
      }
      loop.execute {
        let stream = bound.value
        stream.busy = false
        if case .failure(let error) = registration { stream.fail(error) }
        stream.handleNext()
      }
    }
  }

  /// Handles a message whose store lookups are done.
  private func take(_ message: Trellis_Mesh_V1_SubscribeRequest, issued: IssuedCertificate?) {
    guard let caller else { return }
    guard let node else {
      let node = message.node.isEmpty ? caller.description : message.node
      self.node = node
      let loop = call.eventLoop
      let bound = NIOLoopBound(self, eventLoop: loop)
      let scheduled = wakeScheduled
      let wake = ConfigWaker(
        yield: {
          // Wakes before the last is handled are one wake.
          guard !scheduled.flag.exchange(true, ordering: .acquiringAndReleasing) else { return }
          loop.execute { bound.value.writeSnapshot() }
        },
        finish: {})
      control.hub.subscribe(
        id: id, node: node, identity: caller.description, hello: message, issued: issued,
        certificateNotAfter: leaf?.notValidAfter, wake: wake)
      return
    }
    let version =
      message.responseNonce.isEmpty ? nil : sent.removeValue(forKey: message.responseNonce)
    control.hub.answered(node: node, message, snapshotVersion: version, issued: issued)
  }

  // MARK: To the sidecar

  private func writeSnapshot() {
    wakeScheduled.flag.store(false, ordering: .releasing)
    guard !over else { return }
    guard !call.isBlocked else {
      snapshotDue = true
      return
    }
    snapshotDue = false
    guard let snapshot = control.hub.snapshot(for: id) else { return }
    sent[snapshot.nonce] = snapshot.version
    do {
      call.send(ByteBuffer(bytes: try snapshot.serializedBytes() as [UInt8]))
    } catch {
      fail(error)
    }
  }

  private func fail(_ error: any Error) {
    if let error = error as? RPCError {
      call.finish(code: error.code.rawValue, message: error.message)
    } else {
      call.finish(code: RPCError.Code.internalError.rawValue, message: "\(error)")
    }
  }
}

/// Whether a wake of a stream waits on its event loop already.
private final class WakeFlag: Sendable {
  let flag = Atomic<Bool>(false)
}

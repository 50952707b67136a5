import Synchronization

/// What a sidecar's config stream and its certificate keeper tell each other: the control
/// plane asks for a renewal (a new issuer, or `meshctl certs rotate`), and the keeper reports
/// a new certificate so the control plane can see the rotation go through.
public final class CertificateEvents: Sendable {
  private struct State {
    var requested = false
    var waiter: CheckedContinuation<Void, Never>?
    var onRenewed: (@Sendable () -> Void)?
  }

  private let state = Mutex(State())

  public init() {}

  /// Asks the keeper to renew now.
  public func requestRenewal() {
    let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
      guard let waiter = state.waiter else {
        state.requested = true
        return nil
      }
      state.waiter = nil
      return waiter
    }
    waiter?.resume()
  }

  /// Returns once a renewal is asked for (at once if one was asked for since the last
  /// return), or when the task is cancelled.
  func renewalRequested() async {
    await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let now = state.withLock { state -> Bool in
          if state.requested || Task.isCancelled {
            state.requested = false
            return true
          }
          state.waiter = continuation
          return false
        }
        if now { continuation.resume() }
      }
    } onCancel: {
      let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
        defer { state.waiter = nil }
        return state.waiter
      }
      waiter?.resume()
    }
  }

  /// Who to tell about a new certificate (the config stream that is open), or nobody.
  func onRenewed(_ handler: (@Sendable () -> Void)?) {
    state.withLock { $0.onRenewed = handler }
  }

  func renewed() {
    let handler = state.withLock { $0.onRenewed }
    handler?()
  }
}

/// One endpoint of a called service as a sidecar's balancer sees it at an instant: what the
/// sidecar's engine knows and its link to the control plane reports (for the dashboard), so it
/// lives below both.
public struct EndpointSnapshot: Sendable, Equatable {
  public var service: String
  public var address: String
  public var labels: [String: String]
  /// Ejected by outlier detection, and for how many seconds still.
  public var ejected: Bool
  public var ejectedForSeconds: Double
  public var inFlight: Int
  /// The balancer's latency estimate (a peak-EWMA of the time to first response).
  public var latencyMilliseconds: Double
  public var consecutiveFailures: Int
  public var ejections: Int
  public var calls: Int
  public var failures: Int

  public init(
    service: String, address: String, labels: [String: String], ejected: Bool,
    ejectedForSeconds: Double, inFlight: Int, latencyMilliseconds: Double,
    consecutiveFailures: Int, ejections: Int, calls: Int, failures: Int
  ) {
    self.service = service
    self.address = address
    self.labels = labels
    self.ejected = ejected
    self.ejectedForSeconds = ejectedForSeconds
    self.inFlight = inFlight
    self.latencyMilliseconds = latencyMilliseconds
    self.consecutiveFailures = consecutiveFailures
    self.ejections = ejections
    self.calls = calls
    self.failures = failures
  }
}

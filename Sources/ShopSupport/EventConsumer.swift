import Logging
import ServiceLifecycle
import ShopProtos

/// Consumes a topic for a consumer group as long as the service runs: each event is handled,
/// then acknowledged — so one that fails, or whose consumer dies first, comes again (handlers
/// must be idempotent by event id). A lost subscription is opened again with backoff
/// (0.2 s to 5 s).
public struct EventConsumer: Service {
  /// Opens a subscription and calls `each` for every delivery until it ends.
  public typealias Subscribe =
    @Sendable (
      Shop_V1_SubscribeRequest, @escaping @Sendable (Shop_V1_Delivery) async throws -> Void
    ) async throws -> Void
  public typealias Acknowledge = @Sendable (Shop_V1_AckRequest) async throws -> Void

  private let topic: String
  private let group: String
  private let subscribe: Subscribe
  private let acknowledge: Acknowledge
  private let handle: @Sendable (Shop_V1_Event) async throws -> Void
  private let logger: Logger

  public init(
    topic: String, group: String, logger: Logger, subscribe: @escaping Subscribe,
    acknowledge: @escaping Acknowledge,
    handle: @escaping @Sendable (Shop_V1_Event) async throws -> Void
  ) {
    self.topic = topic
    self.group = group
    self.subscribe = subscribe
    self.acknowledge = acknowledge
    self.handle = handle
    self.logger = logger
  }

  public func run() async throws {
    var subscription = Shop_V1_SubscribeRequest()
    subscription.topic = topic
    subscription.consumerGroup = group
    let request = subscription
    var pause = Duration.milliseconds(200)
    while !Task.isShuttingDownGracefully, !Task.isCancelled {
      do {
        try await cancelWhenGracefulShutdown {
          try await subscribe(request) { delivery in
            try await handle(delivery.event)
            var ack = Shop_V1_AckRequest()
            ack.topic = topic
            ack.consumerGroup = group
            ack.eventIds = [delivery.event.id]
            try await acknowledge(ack)
          }
        }
        pause = .milliseconds(200)
      } catch {
        if Task.isShuttingDownGracefully || Task.isCancelled { return }
        logger.warning(
          "event subscription lost; subscribing again",
          metadata: ["topic": "\(topic)", "error": "\(error)", "retry_in": "\(pause)"])
      }
      try? await cancelWhenGracefulShutdown { [pause] in try await Task.sleep(for: pause) }
      pause = min(pause * 2, .seconds(5))
    }
  }
}

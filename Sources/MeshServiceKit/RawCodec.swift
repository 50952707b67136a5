import GRPCCore

/// Passes message bytes through unchanged: `rpc` encodes and decodes messages itself, from
/// descriptors found at run time.
public struct RawSerializer: MessageSerializer {
  public init() {}

  public func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes {
    Bytes(message)
  }
}

public struct RawDeserializer: MessageDeserializer {
  public init() {}

  public func deserialize<Bytes: GRPCContiguousBytes>(_ bytes: Bytes) throws -> [UInt8] {
    bytes.withUnsafeBytes { Array($0) }
  }
}

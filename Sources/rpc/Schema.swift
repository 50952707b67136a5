import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MeshServiceKit
import MeshTranscoding

/// Where a command's descriptors come from: `--protoset` files, or the server by reflection.
struct Schema {
  private let protosetPool: DescriptorPool?
  private var reflection: ReflectionClient?

  init(options: ConnectionOptions, client: GRPCClient<HTTP2ClientTransport.Posix>) throws {
    if options.protoset.isEmpty {
      protosetPool = nil
      reflection = ReflectionClient(
        client: client, metadata: try options.metadata(), options: options.callOptions(timeout: nil)
      )
    } else {
      protosetPool = try Self.loadProtosets(options.protoset)
      reflection = nil
    }
  }

  /// Every service the schema knows.
  mutating func services() async throws -> [String] {
    if let protosetPool { return protosetPool.services.map(\.fullName) }
    do {
      return try await reflection!.listServices()
    } catch let error as ReflectionError {
      throw CLIFailure.other(error.description)
    }
  }

  /// A pool that declares `symbol`; nil when nothing declares it.
  mutating func pool(containing symbol: String) async throws -> DescriptorPool? {
    if let protosetPool {
      return protosetPool.fileName(containingSymbol: symbol) != nil ? protosetPool : nil
    }
    do {
      return try await reflection!.pool(containing: symbol)
    } catch let error as ReflectionError {
      throw CLIFailure.other(error.description)
    }
  }

  static func loadProtosets(_ paths: [String]) throws -> DescriptorPool {
    var files: [String: Data] = [:]
    var all: [DescriptorPool] = []
    for path in paths {
      guard let data = FileManager.default.contents(atPath: path) else {
        throw CLIFailure.other("cannot read --protoset \(path)")
      }
      files[path] = data
      do {
        all.append(try DescriptorPool(fileDescriptorSet: Array(data)))
      } catch {
        throw CLIFailure.other("--protoset \(path): \(error)")
      }
    }
    if all.count == 1 { return all[0] }
    do {
      return try DescriptorPool(files: all.flatMap(\.files))
    } catch {
      throw CLIFailure.other("the --protoset files disagree: \(error)")
    }
  }
}

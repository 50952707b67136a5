// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
  .swiftLanguageMode(.v6),
  .enableUpcomingFeature("ExistentialAny"),
]

let grpcCore = Target.Dependency.product(name: "GRPCCore", package: "grpc-swift-2")
let grpcProtobuf = Target.Dependency.product(name: "GRPCProtobuf", package: "grpc-swift-protobuf")
let grpcHTTP2 = Target.Dependency.product(
  name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport")
let swiftProtobuf = Target.Dependency.product(name: "SwiftProtobuf", package: "swift-protobuf")
let argumentParser = Target.Dependency.product(
  name: "ArgumentParser", package: "swift-argument-parser")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let lifecycle = Target.Dependency.product(
  name: "ServiceLifecycle", package: "swift-service-lifecycle")
let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let nioHTTP2 = Target.Dependency.product(name: "NIOHTTP2", package: "swift-nio-http2")
let nioHPACK = Target.Dependency.product(name: "NIOHPACK", package: "swift-nio-http2")
let nioEmbedded = Target.Dependency.product(name: "NIOEmbedded", package: "swift-nio")
let nioSSL = Target.Dependency.product(name: "NIOSSL", package: "swift-nio-ssl")
let x509 = Target.Dependency.product(name: "X509", package: "swift-certificates")
let crypto = Target.Dependency.product(name: "Crypto", package: "swift-crypto")
let asn1 = Target.Dependency.product(name: "SwiftASN1", package: "swift-asn1")
let grdb = Target.Dependency.product(name: "GRDB", package: "GRDB.swift")
let postgres = Target.Dependency.product(name: "PostgresNIO", package: "postgres-nio")

let package = Package(
  name: "trellis",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "user-service", targets: ["user-service"]),
    .executable(name: "order-service", targets: ["order-service"]),
    .executable(name: "payment-service", targets: ["payment-service"]),
    .executable(name: "event-service", targets: ["event-service"]),
    .executable(name: "rpc", targets: ["rpc"]),
    .executable(name: "meshctl", targets: ["meshctl"]),
    .executable(name: "control-plane", targets: ["control-plane"]),
    .executable(name: "control-plane-bench", targets: ["control-plane-bench"]),
    .executable(name: "sidecar", targets: ["sidecar"]),
    .executable(name: "bench-server", targets: ["bench-server"]),
    .executable(name: "bench-relay", targets: ["bench-relay"]),
    .executable(name: "relay-service", targets: ["relay-service"]),
    .executable(name: "gateway", targets: ["gateway"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
    // Without its default BinaryDelimitedStreams trait, SwiftProtobuf does not link Foundation
    // (it needs only FoundationEssentials), which keeps ~6 MB out of every sidecar.
    .package(
      url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0",
      traits: ["FieldMaskUtilities"]),
    .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
    .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
    .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
    .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
    .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
  ],
  targets: [
    // Generated code and the descriptor sets it was generated from.
    .target(
      name: "MeshProtos",
      dependencies: [swiftProtobuf, grpcCore, grpcProtobuf],
      resources: [.embedInCode("Generated/mesh.protoset")],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "ShopProtos",
      dependencies: [swiftProtobuf, grpcCore, grpcProtobuf],
      resources: [.embedInCode("Generated/shop.protoset")],
      swiftSettings: swiftSettings
    ),

    // etcd's v3 API (our declarations, generated) and a client of it, for the control plane's
    // store; the sidecar does not link it.
    .target(
      name: "EtcdAPI",
      dependencies: [swiftProtobuf, grpcCore, grpcProtobuf, grpcHTTP2, nioCore, nioHTTP2],
      exclude: ["Generated/etcd.protoset"],
      swiftSettings: swiftSettings
    ),

    // Value types: no networking.
    .target(
      name: "MeshIdentity",
      dependencies: [x509, crypto, asn1],
      swiftSettings: swiftSettings
    ),
    // TLS on the system's OpenSSL 3, loaded at run time, for connections that stay open and
    // idle: no buffer kept between reads and writes.
    .target(
      name: "MeshTLS",
      dependencies: [nioCore, asn1],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "MeshConfig",
      dependencies: ["MeshIdentity"],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "MeshTranscoding",
      dependencies: [swiftProtobuf],
      swiftSettings: swiftSettings
    ),
    // Trace context, the span model and the queue spans leave the data path by.
    .target(
      name: "MeshTracing",
      swiftSettings: swiftSettings
    ),

    // The sidecar's engine.
    .target(
      name: "MeshProxy",
      dependencies: [
        "MeshIdentity", "MeshConfig", "MeshTracing", nioCore, nioPosix, nioHPACK,
        nioSSL, x509, logging, lifecycle,
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOTLS", package: "swift-nio"),
      ],
      // The forwarding path runs confined to one event loop per connection pair; the runtime
      // exclusivity checks on its class properties measured ~7 % of the sidecar's CPU under
      // load, so release builds leave them out (the compile-time checks still apply); debug
      // builds and the tests keep them.
      swiftSettings: swiftSettings + [
        .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))
      ]
    ),

    // The control plane: CA service and config store.
    .target(
      name: "MeshControlPlane",
      dependencies: [
        "MeshIdentity", "MeshConfig", "MeshProtos", "MeshTracing", "EtcdAPI", "MeshProxy",
        "MeshTLS", grpcCore, grpcHTTP2, grpcProtobuf,
        logging, lifecycle, x509, crypto, grdb, nioCore, nioPosix, nioHPACK, nioSSL,
        .product(name: "NIOCertificateReloading", package: "swift-nio-extras"),
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ],
      swiftSettings: swiftSettings
    ),

    // A sidecar's link to the control plane.
    .target(
      name: "MeshControlClient",
      dependencies: [
        "MeshIdentity", "MeshConfig", "MeshProtos", "MeshServiceKit", "MeshTracing", grpcCore,
        grpcHTTP2, grpcProtobuf, swiftProtobuf, logging, lifecycle, x509, crypto,
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ],
      swiftSettings: swiftSettings
    ),

    // Hosting services for apps.
    .target(
      name: "MeshServiceKit",
      dependencies: [
        "MeshProtos", "MeshTranscoding", "MeshTracing", grpcCore, grpcHTTP2, grpcProtobuf,
        swiftProtobuf, logging, lifecycle, argumentParser, nioCore, nioPosix,
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      swiftSettings: swiftSettings
    ),

    // The shop.
    .target(
      name: "ShopSupport",
      dependencies: [
        "ShopProtos", grpcCore, grdb, postgres, swiftProtobuf, logging, lifecycle,
        .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
      ],
      swiftSettings: swiftSettings
    ),
    // A PostgreSQL cluster of the mesh's own on this machine (`meshctl up --postgres`, tests).
    .target(
      name: "LocalPostgres",
      dependencies: [postgres, logging],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "UserService",
      dependencies: ["ShopSupport", "ShopProtos", grpcCore, grdb, postgres, swiftProtobuf],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "OrderService",
      dependencies: [
        "ShopSupport", "ShopProtos", grpcCore, grdb, postgres, swiftProtobuf, logging, lifecycle,
      ],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "PaymentService",
      dependencies: [
        "ShopSupport", "ShopProtos", grpcCore, grdb, postgres, swiftProtobuf, logging,
      ],
      swiftSettings: swiftSettings
    ),
    .target(
      name: "EventService",
      dependencies: [
        "ShopSupport", "ShopProtos", grpcCore, grdb, postgres, swiftProtobuf, logging, lifecycle,
      ],
      swiftSettings: swiftSettings
    ),
    .executableTarget(
      name: "event-service",
      dependencies: [
        "EventService", "ShopProtos", "ShopSupport", "MeshServiceKit", "MeshConfig", argumentParser,
        logging,
      ],
      swiftSettings: swiftSettings
    ),
    .executableTarget(
      name: "user-service",
      dependencies: [
        "UserService", "ShopProtos", "ShopSupport", "MeshServiceKit", argumentParser, grpcCore,
        logging, lifecycle, .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      swiftSettings: swiftSettings
    ),
    .executableTarget(
      name: "order-service",
      dependencies: [
        "OrderService", "ShopProtos", "ShopSupport", "MeshServiceKit", argumentParser, grpcCore,
        logging, lifecycle, .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      swiftSettings: swiftSettings
    ),
    .executableTarget(
      name: "payment-service",
      dependencies: [
        "PaymentService", "ShopProtos", "ShopSupport", "MeshServiceKit", argumentParser, logging,
      ],
      swiftSettings: swiftSettings
    ),

    // The shop's HTTP/JSON entry point, transcoding to gRPC from google.api.http annotations.
    .target(
      name: "APIGateway",
      dependencies: [
        "MeshTranscoding", "MeshProtos", "MeshServiceKit", grpcCore, swiftProtobuf, logging, crypto,
        nioCore, .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      swiftSettings: swiftSettings
    ),
    .executableTarget(
      name: "gateway",
      dependencies: [
        "APIGateway", "MeshTranscoding", "MeshServiceKit", "ShopProtos", argumentParser, grpcCore,
        logging, lifecycle, .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdHTTP2", package: "hummingbird"),
      ],
      swiftSettings: swiftSettings
    ),

    // The operators' web dashboard (`meshctl dashboard`): its server, views and assets.
    .target(
      name: "MeshDashboard",
      dependencies: [
        "MeshProtos", "MeshTracing", "MeshConfig", swiftProtobuf, logging, nioCore, lifecycle,
        .product(name: "Hummingbird", package: "hummingbird"),
      ],
      swiftSettings: swiftSettings
    ),

    // The `rpc` CLI.
    .executableTarget(
      name: "rpc",
      dependencies: [
        "MeshTranscoding", "MeshProtos", "MeshServiceKit", "MeshIdentity", "MeshConfig",
        "MeshControlClient", grpcCore,
        grpcHTTP2, swiftProtobuf, argumentParser, nioCore, nioPosix, nioHTTP2, nioSSL, x509,
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
        .product(name: "Histogram", package: "hdrhistogram-swift"),
      ],
      swiftSettings: swiftSettings
    ),

    // The sidecar executable.
    .executableTarget(
      name: "sidecar",
      dependencies: [
        "MeshProxy", "MeshControlClient", "MeshConfig", "MeshIdentity", "MeshServiceKit",
        "MeshTracing", argumentParser, logging, grpcCore,
        lifecycle, crypto,
      ],
      swiftSettings: swiftSettings,
      // The sidecar's memory (measured by scripts/bench; target 30 MB under load):
      // - lld with packed relative relocations (DT_RELR, glibc 2.36+): the loader reads 12 KB of
      //   relocations instead of gold's 1.4 MB, which otherwise stay resident;
      // - the Swift runtime, stdlib and FoundationEssentials linked in statically, so unused
      //   parts are dropped (--gc-sections) and no dynamic symbol resolution touches their
      //   export tables: about 2 MB less, and a binary that runs on a host without Swift.
      //   (FoundationEssentials' static archive needs its two helper archives named.)
      linkerSettings: [
        .unsafeFlags([
          "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-static-stdlib",
          "-l_FoundationCollections", "-l_FoundationCShims",
        ])
      ]
    ),

    // `meshctl`.
    .executableTarget(
      name: "meshctl",
      dependencies: [
        "LocalPostgres", "ShopSupport", postgres,
        "MeshIdentity", "MeshConfig", "MeshServiceKit", "MeshProtos", "MeshControlClient",
        "EtcdAPI", "MeshDashboard", .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdTLS", package: "hummingbird"),
        .product(name: "HummingbirdCore", package: "hummingbird"), nioSSL,
        argumentParser, x509, crypto,
        "MeshTracing", grpcCore, grpcHTTP2, grpcProtobuf, swiftProtobuf,
        .product(name: "SwiftASN1", package: "swift-asn1"), .product(name: "Yams", package: "Yams"),
      ],
      swiftSettings: swiftSettings
    ),

    .executableTarget(
      name: "control-plane",
      dependencies: [
        "MeshControlPlane", "MeshConfig", "MeshIdentity", "MeshServiceKit", "EtcdAPI",
        argumentParser, logging, lifecycle,
      ],
      swiftSettings: swiftSettings
    ),

    // Config propagation and CSR signing measured against a running control plane.
    .executableTarget(
      name: "control-plane-bench",
      dependencies: [
        "MeshIdentity", "MeshProtos", "MeshControlClient", "MeshTLS", argumentParser, grpcCore,
        grpcHTTP2, grpcProtobuf, x509, crypto, nioCore, nioPosix, nioSSL,
        .product(name: "SwiftASN1", package: "swift-asn1"),
      ],
      swiftSettings: swiftSettings
    ),

    // A service for trying the mesh out: calls that pass from service to service.
    .executableTarget(
      name: "relay-service",
      dependencies: [
        "MeshServiceKit", grpcCore, grpcProtobuf, swiftProtobuf, argumentParser,
        .product(name: "Tracing", package: "swift-distributed-tracing"),
      ],
      resources: [.embedInCode("Generated/relay.protoset")],
      swiftSettings: swiftSettings
    ),

    // The far end of the proxy benchmarks (`scripts/bench`).
    .executableTarget(
      name: "bench-server",
      dependencies: [argumentParser, nioCore, nioPosix, nioHTTP2],
      swiftSettings: swiftSettings
    ),

    // The floor of the proxy benchmarks: a byte relay that does no work (`scripts/bench`).
    .executableTarget(name: "bench-relay"),

    // The HTTP/2 core's cost per request beside NIOHTTP2Handler's, on the same bytes.
    // The dashboard's own cost: its server over a mesh of 50 services and 10,000 traces.
    .executableTarget(
      name: "dashboard-bench",
      dependencies: [
        "MeshControlClient", "MeshDashboard", "MeshIdentity", "MeshProtos", logging, grpcCore,
        grpcHTTP2,
        grpcProtobuf, x509, crypto, .product(name: "Hummingbird", package: "hummingbird"),
      ],
      swiftSettings: swiftSettings
    ),
    .executableTarget(
      name: "h2-core-bench",
      dependencies: ["MeshProxy", nioCore, nioHTTP2, nioEmbedded, nioHPACK],
      swiftSettings: swiftSettings
    ),

    // The HTTP/2 core's fuzz target: `scripts/fuzz` builds it with libFuzzer (and FUZZING);
    // built as it is here, it replays inputs (`h2-fuzz Tests/Fuzz/corpus`).
    .executableTarget(
      name: "h2-fuzz",
      dependencies: ["MeshProxy"],
      swiftSettings: swiftSettings
    ),

    // Tests.
    .target(
      name: "TestSupport",
      path: "Tests/TestSupport",
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshTranscodingTests",
      dependencies: ["MeshTranscoding", "TestSupport", "ShopProtos", "MeshProtos", swiftProtobuf],
      exclude: ["Inputs"],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "APIGatewayTests",
      dependencies: ["APIGateway", "MeshTranscoding", "ShopProtos"],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshProxyTests",
      dependencies: ["MeshProxy", "MeshConfig", nioCore, nioHPACK, nioEmbedded],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshControlPlaneTests",
      dependencies: [
        "MeshControlPlane", "MeshIdentity", "MeshProtos", "EtcdAPI", "TestSupport", x509, crypto,
        grdb,
      ],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshControlClientTests",
      dependencies: [
        "MeshControlClient", "MeshConfig", "MeshProtos", "MeshServiceKit", "MeshTracing",
      ],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshServiceKitTests",
      dependencies: ["MeshServiceKit", logging],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "EtcdAPITests",
      dependencies: ["EtcdAPI", "TestSupport", nioCore, nioEmbedded],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshDashboardTests",
      dependencies: ["MeshDashboard", "MeshProtos"],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshTracingTests",
      dependencies: ["MeshTracing"],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshConfigTests",
      dependencies: ["MeshConfig", "TestSupport"],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshTLSTests",
      dependencies: [
        "MeshTLS", "MeshIdentity", nioCore, nioPosix, nioSSL, x509, crypto, asn1,
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
      ],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "MeshIdentityTests",
      dependencies: ["MeshIdentity", "TestSupport", x509, crypto, asn1],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "ShopServiceTests",
      dependencies: [
        "UserService", "OrderService", "PaymentService", "EventService", "ShopProtos",
        "ShopSupport", "LocalPostgres", "TestSupport", grpcCore, swiftProtobuf, postgres, logging,
        grdb,
      ],
      swiftSettings: swiftSettings
    ),
    .testTarget(
      name: "IntegrationTests",
      dependencies: ["TestSupport"],
      exclude: ["Inputs"],
      swiftSettings: swiftSettings
    ),
  ]
)

// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Shoal",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "shoal", targets: ["shoal"]),
        .executable(name: "shoal-load", targets: ["shoal-load"]),
        // The pure parts, for the package-benchmark suite in Benchmarks/ (its own package, so CI does not build it).
        .library(name: "ShoalCore", targets: ["PostgresWire", "Pooling", "Configuration"]),
        // What the fuzz targets in Fuzz/ drive (their own package: they build with -sanitize=fuzzer).
        .library(name: "ShoalFuzzable", targets: ["PostgresWire", "Pooling", "Configuration", "AdminConsole", "LinkModel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // Wire codec, SCRAM and MD5 math. No sockets.
        .target(
            name: "PostgresWire",
            dependencies: [
                "CRandom",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .systemLibrary(name: "CRandom"),
        // pgbouncer.ini and userlist.txt, read the way PgBouncer reads them.
        .target(name: "Configuration"),
        // Pure pooling logic: protocol trackers, pools, parameter cache. No Channel, no clock reads.
        .target(
            name: "Pooling",
            dependencies: [
                "PostgresWire", "Configuration",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            // PoolState is generic over the glue's server and client classes; full cross-module optimisation
            // lets the proxy use specialised copies instead of runtime generic metadata on every lease (perf).
            swiftSettings: [.unsafeFlags(["-cross-module-optimization"], .when(configuration: .release))]
        ),
        // A model PostgreSQL backend and the client lives that drive LinkStateMachine against it: the randomized
        // test and the link-machine fuzz target share them.
        .target(name: "LinkModel", dependencies: ["Pooling", "PostgresWire", "Configuration", .product(name: "NIOCore", package: "swift-nio")]),
        // The admin console's grammar and result sets (PgBouncer's columns), built from live data handed in.
        .target(
            name: "AdminConsole",
            dependencies: ["PostgresWire", "Configuration", "Pooling", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // Thin NIO glue: listeners, handlers, connectors, the console session, the metrics endpoint.
        .target(
            name: "ProxyServer",
            dependencies: [
                "PostgresWire", "Configuration", "Pooling", "AdminConsole",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // Channel handlers cross EventLoops through execute {}; their thread confinement is by design
            // (documented where it happens), which Swift 6's checker cannot see. Exclusivity checks cost
            // measurable time per message on the forwarding path (perf: swift_beginAccess); state here is
            // confined to one EventLoop, so release builds leave them out.
            swiftSettings: [
                .swiftLanguageMode(.v5),
                .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
            ]
        ),
        .executableTarget(
            name: "shoal",
            dependencies: [
                "ProxyServer", "Configuration", "AdminConsole",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // The PHP-pattern load generator on libpq's non-blocking API, and its command line.
        .target(
            name: "LoadHarness",
            dependencies: ["CLibPQ", "CEpoll", .product(name: "Histogram", package: "hdrhistogram-swift")]
        ),
        .systemLibrary(name: "CEpoll"),
        .executableTarget(name: "shoal-load", dependencies: ["LoadHarness"]),
        // libpq, for the integration tests (and the load harness).
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .testTarget(name: "PostgresWireTests", dependencies: ["PostgresWire"]),
        .testTarget(name: "ConfigurationTests", dependencies: ["Configuration"]),
        .testTarget(name: "PoolingTests", dependencies: ["Pooling", "Configuration", "PostgresWire", "LinkModel"]),
        .testTarget(name: "AdminConsoleTests", dependencies: ["AdminConsole", "Configuration", "Pooling"]),
        .testTarget(name: "LoadHarnessTests", dependencies: ["LoadHarness"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["CLibPQ", "ProxyServer", "Configuration", "PostgresWire", "LoadHarness"],
            exclude: ["Fixtures"],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
    ]
)

// swift-tools-version: 6.1
// Hot-path micro-benchmarks with package-benchmark, in a package of their own so the main build and CI do not
// pay for them. Run: cd Benchmarks && swift package benchmark   (release build, allocation counts included)
import PackageDescription

let package = Package(
    name: "ShoalBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "Shoal", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "HotPaths",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ShoalCore", package: "Shoal"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/HotPaths",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // nio-floor.sh: what an idle connection costs under NIO alone. Outside Benchmarks/: package-benchmark
        // runs every executable there as a benchmark suite, and this one needs a port argument.
        .executableTarget(
            name: "NIOFloor",
            dependencies: [.product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOCore", package: "swift-nio")],
            path: "Tools/NIOFloor"
        ),
    ]
)

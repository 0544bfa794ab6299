// swift-tools-version: 6.1
// libFuzzer targets for the parts that read bytes from the network or text from an operator. Their own package:
// they build with `-sanitize=fuzzer,address` (see run.sh and README.md), which the main build must not.
import PackageDescription

let targets = [
    "fuzz-frame-scanner", "fuzz-startup-packet", "fuzz-scram", "fuzz-session-state", "fuzz-config",
    "fuzz-admin-command", "fuzz-link-machine", "fuzz-link-raw",
]

let package = Package(
    name: "ShoalFuzz",
    dependencies: [
        .package(name: "Shoal", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .target(name: "CLibFuzzer"),
        .target(name: "FuzzDriver", dependencies: ["CLibFuzzer"]),
    ] + targets.map { name in
        .executableTarget(
            name: name,
            dependencies: [
                "FuzzDriver",
                .product(name: "ShoalFuzzable", package: "Shoal"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Sources/\(name)"
        )
    }
)

import CLibFuzzer
#if canImport(Glibc)
import Glibc
#endif

nonisolated(unsafe) private var target: ((UnsafeBufferPointer<UInt8>) -> Void)?

/// Runs libFuzzer (its usual command line: corpus folders, -runs, -max_total_time…) on `test`, which gets each
/// input and traps when an invariant breaks.
public func fuzz(_ test: @escaping (UnsafeBufferPointer<UInt8>) -> Void) -> Never {
    target = test
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
}

/// libFuzzer's callback. Also exported under its well-known name: the toolchain links libFuzzer's own main(),
/// which refers to it, even though the program's entry point is SwiftPM's.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let target else { fatalError("fuzz(_:) was not called: this program's entry point is not its main.swift") }
    target(UnsafeBufferPointer(start: data, count: count))
    return 0
}

private let tracing = getenv("FUZZ_TRACE") != nil

/// With FUZZ_TRACE=1 in the environment, writes `line` to standard error (unbuffered, so it survives the trap):
/// run a target on one crash file to read its story.
public func trace(_ line: @autoclosure () -> String) {
    guard tracing else { return }
    let text = line() + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

import Foundation

/// A client speaking the protocol byte by byte, for splits no driver makes (trust auth: no SCRAM here).
final class RawClient {
    let fd: Int32

    init(port: Int, host: String = "127.0.0.1", receiveTimeout: Int = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(host)
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { Foundation.close(fd); throw TestFailure("connect failed") }
        var timeout = timeval(tv_sec: receiveTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8]) throws {
        let sent = bytes.withUnsafeBytes { Foundation.send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == bytes.count else { throw TestFailure("short send") }
    }

    /// Sends a protocol 3.0 startup packet.
    func sendStartup(user: String = "postgres", database: String = "postgres") throws {
        var body = be32(196608)
        for (key, value) in [("user", user), ("database", database)] { body += Array(key.utf8) + [0] + Array(value.utf8) + [0] }
        body += [0]
        try send(be32(body.count + 4) + body)
    }

    func login(user: String = "postgres", database: String = "postgres") throws {
        try sendStartup(user: user, database: database)
        _ = try readUntilReady()
    }

    /// Reads messages up to and including ReadyForQuery; returns their types.
    func readUntilReady() throws -> [UInt8] { try readUntil(UInt8(ascii: "Z")) }

    /// Sends `bytes` one byte per write, so that Shoal reads every message split at every boundary.
    func trickle(_ bytes: [UInt8]) throws {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        for byte in bytes {
            try send([byte])
            usleep(500)
        }
    }

    /// Reads messages up to and including the first of type `last`; returns their types.
    func readUntil(_ last: UInt8) throws -> [UInt8] {
        try readUntil(last, received: nil)
    }

    /// Logs in (trust) and returns the BackendKeyData it was given.
    func loginForKey(user: String = "postgres", database: String = "postgres") throws -> (processID: Int32, secretKey: Int32) {
        try sendStartup(user: user, database: database)
        let bytes = try readBytesUntilReady()
        var index = 0
        while index + 5 <= bytes.count {
            let length = Int(UInt32(bytes[index + 1]) << 24 | UInt32(bytes[index + 2]) << 16 | UInt32(bytes[index + 3]) << 8 | UInt32(bytes[index + 4]))
            if bytes[index] == UInt8(ascii: "K"), index + 13 <= bytes.count {
                func int32(_ at: Int) -> Int32 {
                    Int32(bitPattern: UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3]))
                }
                return (int32(index + 5), int32(index + 9))
            }
            index += 1 + length
        }
        throw TestFailure("no BackendKeyData")
    }

    /// Reads messages up to and including the first ReadyForQuery; returns their bytes.
    func readBytesUntilReady() throws -> [UInt8] {
        var bytes: [UInt8] = []
        _ = try readUntil(UInt8(ascii: "Z"), received: &bytes)
        return bytes
    }

    private func readUntil(_ last: UInt8, received output: UnsafeMutablePointer<[UInt8]>?) throws -> [UInt8] {
        var received: [UInt8] = []
        defer { output?.pointee = received }
        var types: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            var index = 0
            types = []
            while received.count - index >= 5 {
                let length = Int(UInt32(received[index + 1]) << 24 | UInt32(received[index + 2]) << 16 | UInt32(received[index + 3]) << 8 | UInt32(received[index + 4]))
                guard received.count - index >= 1 + length else { break }
                types.append(received[index])
                if received[index] == last { return types }
                index += 1 + length
            }
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { throw TestFailure("connection closed before ReadyForQuery (got \(types))") }
            received += chunk[0..<count]
        }
    }

    /// Everything the peer sends until it closes (or the receive timeout passes).
    func readAll() -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count <= 0 { break }
            received += chunk[0..<count]
        }
        return received
    }

    private var closed = false
    func close() {
        guard !closed else { return }
        closed = true
        Foundation.close(fd)
    }
    deinit { close() }
}

func be32(_ value: Int) -> [UInt8] {
    withUnsafeBytes(of: UInt32(value).bigEndian) { Array($0) }
}

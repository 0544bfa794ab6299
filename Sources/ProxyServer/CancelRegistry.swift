import NIOConcurrencyHelpers

/// Maps the BackendKeyData Shoal hands each client to that client, so a CancelRequest finds it.
/// Touched at login, logout and cancel only.
final class CancelRegistry: @unchecked Sendable {
    private let lock = NIOLock()
    private var clients: [UInt64: Weak] = [:]

    private struct Weak { weak var client: ClientConnection? }

    static func combine(_ processID: Int32, _ secretKey: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: processID)) << 32 | UInt64(UInt32(bitPattern: secretKey))
    }

    /// Registers a client under a fresh random key and returns it. The process ID is kept positive, like PgBouncer.
    func register(_ client: ClientConnection) -> (processID: Int32, secretKey: Int32) {
        var generator = SystemRandomNumberGenerator()
        return lock.withLock {
            while true {
                let processID = Int32.random(in: 1...Int32.max, using: &generator)
                let secretKey = Int32.random(in: Int32.min...Int32.max, using: &generator)
                let key = Self.combine(processID, secretKey)
                if clients[key] == nil {
                    clients[key] = Weak(client: client)
                    return (processID, secretKey)
                }
            }
        }
    }

    func unregister(processID: Int32, secretKey: Int32) {
        _ = lock.withLock { clients.removeValue(forKey: Self.combine(processID, secretKey)) }
    }

    func client(processID: Int32, secretKey: Int32) -> ClientConnection? {
        lock.withLock { clients[Self.combine(processID, secretKey)]?.client }
    }
}

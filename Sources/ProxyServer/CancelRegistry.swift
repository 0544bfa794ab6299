import NIOConcurrencyHelpers
import Pooling

/// Maps the BackendKeyData Shoal hands each client to that client, so a CancelRequest finds it.
/// Touched at login, logout and cancel only.
///
/// With peering (`peer_id`, `[peers]`, `peers_dns`) the key carries this process's peer id and a TTL
/// (`PeerCancelKey`); clients are found by the key without its TTL bits, which forwarding lowers.
final class CancelRegistry: @unchecked Sendable {
    private let lock = NIOLock()
    /// Strong references: every client with a key unregisters it when it disconnects (`disconnected`). A weak
    /// reference gave every client a side table, which makes every retain and release of it take the slow path
    /// (about 1 % of all samples under pgbench -S: `incrementSlow`, `doDecrementSlow`) and costs an allocation per
    /// client.
    private var clients: [UInt64: ClientConnection] = [:]

    /// Registers a client under a fresh random key and returns it. The process ID is kept positive, like PgBouncer;
    /// `peerID` above 0 is written in (PgBouncer's layout), and `peering` gives the key a TTL.
    func register(_ client: ClientConnection, peerID: Int = 0, peering: Bool = false) -> (processID: Int32, secretKey: Int32) {
        var generator = SystemRandomNumberGenerator()
        while true {
            // One draw (one getrandom() call) for both halves, taken outside the lock.
            let word: UInt64 = generator.next()
            var key = PeerCancelKey(processID: Int32(truncatingIfNeeded: word >> 32) & Int32.max,
                                    secretKey: Int32(truncatingIfNeeded: word))
            if peerID > 0 { key = key.stamped(peerID: peerID) } else if peering { key = key.withFreshTTL() }
            guard key.processID != 0 else { continue }
            let taken = lock.withLock {
                if clients[key.identity] != nil { return true }
                clients[key.identity] = client
                return false
            }
            if !taken { return (key.processID, key.secretKey) }
        }
    }

    func unregister(processID: Int32, secretKey: Int32) {
        _ = lock.withLock { clients.removeValue(forKey: PeerCancelKey(processID: processID, secretKey: secretKey).identity) }
    }

    func client(processID: Int32, secretKey: Int32) -> ClientConnection? {
        lock.withLock { clients[PeerCancelKey(processID: processID, secretKey: secretKey).identity] }
    }
}

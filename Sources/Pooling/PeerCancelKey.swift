/// PgBouncer's peering layout of the 8-byte cancel key (`[peers]`, `peer_id`): the key is the BackendKeyData
/// process ID (bytes 0–3, big-endian) followed by the secret (bytes 4–7). Bytes 1–2 carry the peer id of the
/// process that issued the key (little-endian), the low 2 bits of byte 7 a time-to-live that starts at 3 and
/// drops by one at each forward, so a CancelRequest that lands on the wrong process behind a load balancer
/// reaches the right one, and can never circle forever. Byte 0's top bit stays clear (a positive "pid").
public struct PeerCancelKey: Equatable, Sendable {
    public var processID: Int32
    public var secretKey: Int32

    public init(processID: Int32, secretKey: Int32) {
        self.processID = processID
        self.secretKey = secretKey
    }

    public static let initialTTL = 3

    /// The key with `peerID` (1…16383) and a fresh TTL written in.
    public func stamped(peerID: Int) -> PeerCancelKey {
        var pid = UInt32(bitPattern: processID) & 0x7F00_00FF
        pid |= UInt32(peerID & 0xFF) << 16 | UInt32((peerID >> 8) & 0xFF) << 8
        let secret = UInt32(bitPattern: secretKey) & ~3 | UInt32(Self.initialTTL)
        return PeerCancelKey(processID: Int32(bitPattern: pid), secretKey: Int32(bitPattern: secret))
    }

    /// The key with a fresh TTL only (peering by discovery, no peer id: the other bytes stay random).
    public func withFreshTTL() -> PeerCancelKey {
        PeerCancelKey(processID: processID, secretKey: Int32(bitPattern: UInt32(bitPattern: secretKey) & ~3 | UInt32(Self.initialTTL)))
    }

    /// The peer id written in the key (0: none).
    public var peerID: Int {
        let pid = UInt32(bitPattern: processID)
        return Int((pid >> 16) & 0xFF) | Int((pid >> 8) & 0xFF) << 8
    }

    public var ttl: Int { Int(UInt32(bitPattern: secretKey) & 3) }

    /// The copy a process forwards: the TTL one lower (nil when it is already 0: the request is dropped).
    public func forwarded() -> PeerCancelKey? {
        guard ttl > 0 else { return nil }
        return PeerCancelKey(processID: processID, secretKey: Int32(bitPattern: UInt32(bitPattern: secretKey) & ~3 | UInt32(ttl - 1)))
    }

    /// The copy a process sends to every peer it discovered (no peer id to route by): TTL 0, so none forwards it.
    public func broadcast() -> PeerCancelKey {
        PeerCancelKey(processID: processID, secretKey: Int32(bitPattern: UInt32(bitPattern: secretKey) & ~3))
    }

    /// What identifies the client: the key without its TTL bits, which forwarding changes.
    public var identity: UInt64 {
        UInt64(UInt32(bitPattern: processID)) << 32 | UInt64(UInt32(bitPattern: secretKey) & ~3)
    }
}

/// Which of a database entry's hosts a pool may use, with libpq's `target_session_attrs` names.
public enum TargetSessionAttrs: String, Sendable, Equatable, CaseIterable {
    /// Every host that is up, in order or round-robin (`load_balance_hosts`): PgBouncer's behaviour.
    case any
    /// The writer only (`primary` is the same for Shoal: Aurora and streaming replicas have one writer).
    case readWrite = "read-write"
    case primary
    /// Replicas only; clients wait when none is healthy.
    case readOnly = "read-only"
    case standby
    /// Replicas, or the writer when no replica is healthy and within `max_replica_lag`.
    case preferStandby = "prefer-standby"

    /// The roles a pool with this target takes, in order of preference.
    public var wantsWriterOnly: Bool { self == .readWrite || self == .primary }
    public var wantsReplicasOnly: Bool { self == .readOnly || self == .standby }
}

/// One backend address of a database entry.
public struct HostAddress: Hashable, Sendable, CustomStringConvertible, Comparable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var isUnixSocket: Bool { host.hasPrefix("/") }
    /// An IPv4 or IPv6 literal: TLS checks the certificate's IP addresses then, and sends no SNI.
    public var isIPLiteral: Bool { host.contains(":") || host.allSatisfy { $0.isNumber || $0 == "." } }
    public var description: String { isUnixSocket ? "unix:\(host)/.s.PGSQL.\(port)" : "\(host):\(port)" }

    public static func < (a: HostAddress, b: HostAddress) -> Bool {
        (a.host, a.port) < (b.host, b.port)
    }
}

import Foundation
import Pooling

/// One client or server connection as SHOW CLIENTS / SHOW SERVERS print it, read on its own EventLoop.
public struct ConnectionInfo: Sendable, Equatable {
    public var type: String
    public var user: String
    public var database: String
    public var state: String
    public var addr: String
    public var port: Int
    public var localAddr: String
    public var localPort: Int
    public var connectTime: Date
    public var requestTime: Date
    public var waitMicros: UInt64
    public var closeNeeded: Bool
    public var ptr: String
    public var link: String
    public var remotePid: Int
    public var tls: String
    public var applicationName: String
    public var id: Int
    /// The pool the connection belongs to (its database and pool user).
    public var poolKey: PoolKey?
    /// Shoal's extension: the session state pinning a client to its server (`held_cursor,advisory_lock`…).
    public var pinned: String = ""
    /// PgBouncer's `replication` column: `none`, `logical` or `physical`.
    public var replication = "none"

    public init(type: String, user: String, database: String, state: String, addr: String, port: Int, localAddr: String,
                localPort: Int, connectTime: Date, requestTime: Date, waitMicros: UInt64, closeNeeded: Bool, ptr: String,
                link: String, remotePid: Int, tls: String, applicationName: String, id: Int, poolKey: PoolKey? = nil,
                pinned: String = "") {
        self.type = type
        self.user = user
        self.database = database
        self.state = state
        self.addr = addr
        self.port = port
        self.localAddr = localAddr
        self.localPort = localPort
        self.connectTime = connectTime
        self.requestTime = requestTime
        self.waitMicros = waitMicros
        self.closeNeeded = closeNeeded
        self.ptr = ptr
        self.link = link
        self.remotePid = remotePid
        self.tls = tls
        self.applicationName = applicationName
        self.id = id
        self.poolKey = poolKey
        self.pinned = pinned
    }
}

/// One pool as SHOW POOLS and the Prometheus endpoint report it.
public struct PoolInfo: Sendable, Equatable {
    public var key: PoolKey
    public var clientsActive = 0
    public var clientsWaiting = 0
    public var clientsIdle = 0
    /// Clients pinned to their server connection by session state.
    public var clientsPinned = 0
    public var serversActive = 0
    public var serversIdle = 0
    public var serversUsed = 0
    public var serversTested = 0
    public var serversLogin = 0
    public var maxWaitMicros: UInt64 = 0
    public var mode: String
    public var loadBalanceHosts: String?
    public var paused = false
    public var traffic = TrafficCounters()

    public init(key: PoolKey, mode: String) {
        self.key = key
        self.mode = mode
    }

    /// Counts a connection row into the client or server figures.
    public mutating func count(_ connection: ConnectionInfo) {
        if connection.type == "C" {
            if !connection.pinned.isEmpty { clientsPinned += 1 }
            switch connection.state {
            case "active": clientsActive += 1
            case "waiting": clientsWaiting += 1
            default: clientsIdle += 1
            }
        } else {
            switch connection.state {
            case "active": serversActive += 1
            case "idle": serversIdle += 1
            case "used": serversUsed += 1
            case "tested": serversTested += 1
            default: serversLogin += 1
            }
        }
    }
}

/// Everything SHOW CLIENTS, SERVERS and POOLS need, gathered in one visit of every EventLoop.
public struct ConsoleSnapshot: Sendable {
    public var clients: [ConnectionInfo]
    public var servers: [ConnectionInfo]
    public var pools: [PoolInfo]
    public var authFailures: UInt64

    public init(clients: [ConnectionInfo], servers: [ConnectionInfo], pools: [PoolInfo], authFailures: UInt64) {
        self.clients = clients
        self.servers = servers
        self.pools = pools
        self.authFailures = authFailures
    }
}

enum ConsoleFormat {
    /// PgBouncer prints times as `YYYY-MM-DD HH:MM:SS` plus the zone; Shoal prints UTC with a numeric offset,
    /// which psql shows as it is and drivers that parse timestamptz (psycopg) accept.
    static func timestamp(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d+00", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1,
                      Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }
}

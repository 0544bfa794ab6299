import NIOConcurrencyHelpers
import NIOCore
import PostgresWire

/// Named protocol-level prepared statements across server connections (PgBouncer's max_prepared_statements):
/// a client's `Parse` with a name is kept per client; on each server connection the client lands on, the
/// statement exists under a server-unique name (`shoal_<n>`, one per distinct text and parameter types),
/// prepared there on first use and kept in an LRU of `max_prepared_statements`; `Bind`, `Describe` and
/// `Close` are mapped accordingly. Unnamed statements pass through untouched.

/// Process-wide: one server name per distinct (query, parameter types), so server connections share them.
public final class StatementNames: @unchecked Sendable {
    private let lock = NIOLock()
    private var names: [ByteBuffer: String] = [:]
    private var next: UInt64 = 1
    private let capacity: Int

    /// Past `capacity` distinct statements the table starts again (clients keep the names they hold; a new
    /// Parse of an old text just gets a new name), so a client that prepares endless texts cannot grow it.
    public init(capacity: Int = 100_000) { self.capacity = capacity }

    public func name(for definition: ByteBuffer) -> String {
        lock.withLock {
            if let name = names[definition] { return name }
            if names.count >= capacity { names.removeAll(keepingCapacity: true) }
            let name = "shoal_\(next)"
            next += 1
            names[definition] = name
            return name
        }
    }
}

/// What one server connection has prepared, least recently used first out.
public struct ServerStatements: Sendable {
    private var lastUse: [String: UInt64] = [:]
    private var tick: UInt64 = 0

    public init() {}

    public var count: Int { lastUse.count }
    public func contains(_ name: String) -> Bool { lastUse[name] != nil }

    public mutating func touch(_ name: String) {
        tick += 1
        lastUse[name] = tick
    }

    public mutating func remove(_ name: String) { lastUse[name] = nil }
    public mutating func removeAll() { lastUse = [:] }

    /// A client's DEALLOCATE ALL / DISCARD ALL was sent, and may have failed (inside an aborted transaction):
    /// the server may still hold statements Shoal no longer counts. From then on each Parse Shoal injects is
    /// preceded by a Close of the same name (not an error when the name is unknown), so an old copy can never
    /// answer "already exists" to another client.
    public private(set) var mayHoldUncounted = false

    public mutating func removeAllUncertain() {
        lastUse = [:]
        mayHoldUncounted = true
    }

    /// The least recently used name, other than those in `keep`.
    public func victim(keeping keep: Set<String>) -> String? {
        lastUse.filter { !keep.contains($0.key) }.min { $0.value < $1.value }?.key
    }
}

/// A response Shoal expects from the server for a Parse or Close it forwarded or injected, in order.
public struct ExpectedResponse: Sendable, Equatable {
    /// '1' ParseComplete or '3' CloseComplete.
    public var type: UInt8
    /// Injected by Shoal: the client never asked for it, so it is dropped.
    public var drop: Bool
    /// The Sync/Query ordinal it belongs to: an error skips the rest of its batch.
    public var batch: Int
    /// For a Parse: the server-side name it creates (forgotten again if the Parse fails).
    public var serverName: String?
    /// For a client's Parse: the client's name (forgotten again if the Parse fails).
    public var clientName: String?

    public init(type: UInt8, drop: Bool, batch: Int, serverName: String? = nil, clientName: String? = nil) {
        self.type = type
        self.drop = drop
        self.batch = batch
        self.serverName = serverName
        self.clientName = clientName
    }
}

/// The per-client half: the client's names and what each stands for, and the rewriting of its messages.
///
/// Bounded, so one client cannot make Shoal hold without end: past `Limits.count` statements, or
/// `Limits.bytes` of definitions, the least recently used name is forgotten. The client is not told (the
/// protocol has no way to); a later Bind of that name reaches the server as sent, and PostgreSQL answers
/// `prepared statement "…" does not exist` (26000), so the loss shows as an error, never as another statement.
public struct ClientStatements: Sendable {
    public struct Statement: Sendable {
        public var serverName: String
        /// Query text and parameter types as the Parse body carries them after the name.
        public var definition: ByteBuffer
        var lastUse: UInt64 = 0
    }

    public struct Limits: Sendable, Equatable {
        /// Statements per client (max_client_prepared_statements); 0 = no limit.
        public var count: Int
        /// Bytes of definitions per client.
        public var bytes: Int

        public init(count: Int, bytes: Int) {
            self.count = count
            self.bytes = bytes
        }

        public static let unlimited = Limits(count: 0, bytes: Int.max)
    }

    public private(set) var statements: [String: Statement] = [:]
    private var tick: UInt64 = 0
    public private(set) var definitionBytes = 0
    /// Names forgotten to stay within the limits, over this client's life.
    public private(set) var evicted = 0
    /// The last name a Parse defined a second time (PgBouncer logs "prepared statement '…' was already prepared").
    public internal(set) var redefined: String?

    public init() {}

    /// Uses `name` now (for the least-recently-used order).
    private mutating func touch(_ name: String) {
        tick &+= 1
        statements[name]?.lastUse = tick
    }

    private mutating func add(_ name: String, _ statement: Statement, limits: Limits) {
        statements[name] = statement
        definitionBytes += statement.definition.readableBytes
        touch(name)
        while (limits.count > 0 && statements.count > limits.count) || definitionBytes > limits.bytes {
            // A linear search, only once over a limit (a client that stays within them pays nothing for it).
            var victim: (name: String, lastUse: UInt64)?
            for (candidate, statement) in statements where candidate != name && statement.lastUse < (victim?.lastUse ?? .max) {
                victim = (candidate, statement.lastUse)
            }
            guard let victim else { return }
            forget(victim.name)
            evicted += 1
        }
    }

    private mutating func forget(_ name: String) {
        if let gone = statements.removeValue(forKey: name) { definitionBytes -= gone.definition.readableBytes }
    }

    public enum Rewrite {
        /// Send the message as it is.
        case forward
        /// Send these messages instead (a renamed message, possibly after a Parse that prepares it here).
        case replace([ByteBuffer], expecting: [ExpectedResponse])
    }

    /// Rewrites one client message of type Parse, Bind, Describe or Close. `batch` is the ordinal of the
    /// Sync/Query that will end it; `server` is what the current server connection has prepared.
    public mutating func rewrite(type: UInt8, body: ByteBuffer, batch: Int, server: inout ServerStatements,
                                 names: StatementNames, capacity: Int, limits: Limits = .unlimited) -> Rewrite {
        var body = body
        switch type {
        case FrontendMessage.parse:
            guard let name = body.readNullTerminatedString(), !name.isEmpty else { return .forward }
            if let existing = statements[name] {
                redefined = name
                // Defined twice: make sure the server has the first one, then let it refuse the second under the
                // same server name — PostgreSQL's own error (42P05 "already exists"), and its own batch abort.
                var out: [ByteBuffer] = []
                var expecting: [ExpectedResponse] = []
                ensurePrepared(existing, on: &server, capacity: capacity, batch: batch, into: &out, expecting: &expecting)
                out.append(Self.parse(name: existing.serverName, definition: body.slice()))
                expecting.append(ExpectedResponse(type: UInt8(ascii: "1"), drop: false, batch: batch))
                return .replace(out, expecting: expecting)
            }
            // A copy of exactly the definition: a slice would keep the whole receive buffer it came in alive for
            // as long as the statement (and the process-wide name map) lives.
            let definition = ByteBuffer(bytes: body.readableBytesView)
            let serverName = names.name(for: definition)
            add(name, Statement(serverName: serverName, definition: definition), limits: limits)
            var out: [ByteBuffer] = []
            var expecting: [ExpectedResponse] = []
            if server.contains(serverName) {
                // Already prepared here: parse it as the unnamed statement instead, so the server still answers
                // the client's Parse with a ParseComplete of its own and nothing needs faking.
                server.touch(serverName)
                out.append(Self.parse(name: "", definition: definition))
                expecting.append(ExpectedResponse(type: UInt8(ascii: "1"), drop: false, batch: batch, serverName: nil, clientName: name))
            } else {
                evictIfFull(&server, keeping: [serverName], capacity: capacity, batch: batch, into: &out, expecting: &expecting)
                server.touch(serverName)
                Self.closeIfUncounted(serverName, on: server, batch: batch, into: &out, expecting: &expecting)
                out.append(Self.parse(name: serverName, definition: definition))
                expecting.append(ExpectedResponse(type: UInt8(ascii: "1"), drop: false, batch: batch, serverName: serverName, clientName: name))
            }
            return .replace(out, expecting: expecting)
        case FrontendMessage.bind:
            guard let portal = body.readNullTerminatedString(), let name = body.readNullTerminatedString(), !name.isEmpty,
                  let statement = statements[name] else { return .forward }
            touch(name)
            var out: [ByteBuffer] = []
            var expecting: [ExpectedResponse] = []
            ensurePrepared(statement, on: &server, capacity: capacity, batch: batch, into: &out, expecting: &expecting)
            var bind = ByteBuffer()
            bind.writePostgresMessage(FrontendMessage.bind) { message in
                message.writeCString(portal)
                message.writeCString(statement.serverName)
                var rest = body
                message.writeBuffer(&rest)
            }
            out.append(bind)
            return .replace(out, expecting: expecting)
        case FrontendMessage.describe, FrontendMessage.close:
            guard let kind = body.readInteger(as: UInt8.self), kind == UInt8(ascii: "S"),
                  let name = body.readNullTerminatedString(), !name.isEmpty, let statement = statements[name] else { return .forward }
            var out: [ByteBuffer] = []
            var expecting: [ExpectedResponse] = []
            if type == FrontendMessage.close {
                // The server keeps its copy for others; the client's name is gone. Closing the unnamed statement
                // makes the server answer CloseComplete itself.
                forget(name)
                out.append(Self.nameMessage(type, kind: kind, name: ""))
                expecting.append(ExpectedResponse(type: UInt8(ascii: "3"), drop: false, batch: batch))
                return .replace(out, expecting: expecting)
            }
            touch(name)
            ensurePrepared(statement, on: &server, capacity: capacity, batch: batch, into: &out, expecting: &expecting)
            out.append(Self.nameMessage(type, kind: kind, name: statement.serverName))
            return .replace(out, expecting: expecting)
        default:
            return .forward
        }
    }

    /// A Parse of ours failed: the client's name does not exist after all.
    public mutating func parseFailed(clientName: String) { forget(clientName) }

    /// DEALLOCATE ALL / DISCARD ALL from the client.
    public mutating func removeAll() {
        statements = [:]
        definitionBytes = 0
    }

    private func ensurePrepared(_ statement: Statement, on server: inout ServerStatements, capacity: Int, batch: Int,
                                into out: inout [ByteBuffer], expecting: inout [ExpectedResponse]) {
        if server.contains(statement.serverName) {
            server.touch(statement.serverName)
            return
        }
        evictIfFull(&server, keeping: [statement.serverName], capacity: capacity, batch: batch, into: &out, expecting: &expecting)
        server.touch(statement.serverName)
        Self.closeIfUncounted(statement.serverName, on: server, batch: batch, into: &out, expecting: &expecting)
        out.append(Self.parse(name: statement.serverName, definition: statement.definition))
        expecting.append(ExpectedResponse(type: UInt8(ascii: "1"), drop: true, batch: batch, serverName: statement.serverName))
    }

    private func evictIfFull(_ server: inout ServerStatements, keeping: Set<String>, capacity: Int, batch: Int,
                             into out: inout [ByteBuffer], expecting: inout [ExpectedResponse]) {
        guard capacity > 0, server.count >= capacity, let victim = server.victim(keeping: keeping) else { return }
        server.remove(victim)
        out.append(Self.nameMessage(FrontendMessage.close, kind: UInt8(ascii: "S"), name: victim))
        expecting.append(ExpectedResponse(type: UInt8(ascii: "3"), drop: true, batch: batch))
    }

    private static func closeIfUncounted(_ name: String, on server: ServerStatements, batch: Int,
                                         into out: inout [ByteBuffer], expecting: inout [ExpectedResponse]) {
        guard server.mayHoldUncounted else { return }
        out.append(nameMessage(FrontendMessage.close, kind: UInt8(ascii: "S"), name: name))
        expecting.append(ExpectedResponse(type: UInt8(ascii: "3"), drop: true, batch: batch))
    }

    static func parse(name: String, definition: ByteBuffer) -> ByteBuffer {
        var out = ByteBuffer()
        out.writePostgresMessage(FrontendMessage.parse) { message in
            message.writeCString(name)
            var definition = definition
            message.writeBuffer(&definition)
        }
        return out
    }

    static func nameMessage(_ type: UInt8, kind: UInt8, name: String) -> ByteBuffer {
        var out = ByteBuffer()
        out.writePostgresMessage(type) { message in
            message.writeInteger(kind)
            message.writeCString(name)
        }
        return out
    }
}

/// The server → client half: which ParseComplete/CloseComplete messages were Shoal's own, and what an error
/// in a batch cancels.
public struct ResponseExpectations: Sendable {
    public private(set) var pending: [ExpectedResponse] = []
    /// ReadyForQuery messages seen on this link (each Sync/Query earns one).
    public private(set) var answered = 0

    public init() {}

    public var isEmpty: Bool { pending.isEmpty }

    public mutating func append(_ expected: [ExpectedResponse]) { pending += expected }

    public enum Outcome: Equatable {
        /// Not one of ours to judge: forward.
        case forward
        /// Shoal's injected message's answer: drop it.
        case drop
    }

    /// A ParseComplete or CloseComplete arrived.
    public mutating func completed(type: UInt8) -> Outcome {
        guard let index = pending.firstIndex(where: { $0.type == type }) else { return .forward }
        return pending.remove(at: index).drop ? .drop : .forward
    }

    /// An ErrorResponse arrived: the rest of the current batch is skipped by the server. Returns the expectations
    /// that will never be answered (their Parses failed or never ran).
    public mutating func errorReceived() -> [ExpectedResponse] {
        let batch = answered
        let cancelled = pending.filter { $0.batch <= batch }
        pending.removeAll { $0.batch <= batch }
        return cancelled
    }

    public mutating func readyForQueryReceived() {
        answered += 1
        pending.removeAll { $0.batch < answered }
    }

    public mutating func reset() {
        pending = []
        answered = 0
    }
}

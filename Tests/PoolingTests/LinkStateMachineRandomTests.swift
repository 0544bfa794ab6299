import Configuration
import NIOCore
import Pooling
import PostgresWire
import Testing

/// Thousands of random client lives through the machine, against a model of one PostgreSQL backend that many
/// clients share in turn (transaction pooling with one server): pipelines of simple and extended queries with
/// errors, transaction blocks, COPY FROM STDIN, SET/RESET in and out of blocks, cancels, disconnects at any
/// point; every byte stream cut at random places. After every event:
/// - the server is never given back while the model owes a reply, is in COPY, in a block, or a cancel is out;
/// - the session given back never holds a definite setting the backend does not have, and never misses one
///   it has (a leak to the next client) — a name may only be marked unknown, which forces a reset;
/// - what the machine holds of the client's bytes stays below one message.
@Suite struct LinkStateMachineRandomTests {
    /// The same seeded generator as the ledger's random test: a failure replays exactly.
    typealias Random = SettingsLedgerRandomTests.SplitMix64

    /// One PostgreSQL backend: reads complete frontend messages, answers as PostgreSQL does.
    struct Backend {
        var settings: [String: String] = [:]
        var committed: [String: String] = [:]
        enum Block { case none, open, failed }
        var block = Block.none
        var inCopy = false
        /// An extended batch hit an error: the rest up to Sync is skipped.
        var skippingToSync = false
        var input = ByteBuffer()
        var output = ByteBuffer()
        /// Requests read whose ReadyForQuery has not been written yet (a Query or batch in progress).
        var openUnit = false

        var owesNothing: Bool { input.readableBytes == 0 && output.readableBytes == 0 && !inCopy && block == .none && !openUnit }

        mutating func receive(_ bytes: ByteBuffer) {
            var bytes = bytes
            input.writeBuffer(&bytes)
            while input.readableBytes >= 5 {
                let type = input.getInteger(at: input.readerIndex, as: UInt8.self)!
                let length = Int(input.getInteger(at: input.readerIndex + 1, as: Int32.self)!)
                guard input.readableBytes >= 1 + length else { return }
                input.moveReaderIndex(forwardBy: 5)
                let body = input.readSlice(length: length - 4)!
                handle(type, body)
            }
            input.discardReadBytes()
        }

        mutating func handle(_ type: UInt8, _ body: ByteBuffer) {
            var body = body
            switch type {
            case FrontendMessage.query:
                let sql = body.readNullTerminatedString() ?? ""
                runQuery(sql)
            case FrontendMessage.parse:
                openUnit = true
                guard !skippingToSync else { return }
                _ = body.readNullTerminatedString()
                let sql = body.readNullTerminatedString() ?? ""
                if sql.contains("1/0") || block == .failed {
                    error(endsUnit: false)
                    skippingToSync = true
                } else {
                    output.writePostgresMessage(BackendMessage.parseComplete) { _ in }
                }
            case FrontendMessage.bind:
                openUnit = true
                guard !skippingToSync else { return }
                output.writePostgresMessage(UInt8(ascii: "2")) { _ in }
            case FrontendMessage.execute:
                openUnit = true
                guard !skippingToSync else { return }
                output.writeDataRow(["1"])
                output.writeCommandComplete("SELECT 1")
            case FrontendMessage.sync:
                guard !inCopy else { return } // ignored in copy-in
                skippingToSync = false
                ready()
            case FrontendMessage.copyData:
                break
            case FrontendMessage.copyDone:
                guard inCopy else { return }
                inCopy = false
                output.writeCommandComplete("COPY 1")
                ready()
            default:
                break
            }
        }

        mutating func runQuery(_ sql: String) {
            openUnit = true
            var implicit = block == .none
            let before = settings
            for statement in sql.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) }) where !statement.isEmpty {
                if block == .failed && !statement.hasPrefix("ROLLBACK") && !statement.hasPrefix("COMMIT") {
                    output.writeErrorResponse(severity: "ERROR", code: "25P02", message: "current transaction is aborted")
                    return ready()
                }
                let words = statement.split(separator: " ").map(String.init)
                switch words[0] {
                case "BEGIN":
                    block = .open
                    implicit = false
                    output.writeCommandComplete("BEGIN")
                case "COMMIT":
                    if block == .failed { settings = committed; output.writeCommandComplete("ROLLBACK") } else {
                        committed = settings
                        output.writeCommandComplete("COMMIT")
                    }
                    block = .none
                case "ROLLBACK":
                    settings = committed
                    block = .none
                    output.writeCommandComplete("ROLLBACK")
                case "SET":
                    settings[words[1]] = words[3]
                    output.writeCommandComplete("SET")
                case "RESET":
                    settings[words[1]] = nil
                    output.writeCommandComplete("RESET")
                case "COPY":
                    inCopy = true
                    output.writePostgresMessage(BackendMessage.copyInResponse) { $0.writeInteger(UInt8(0)); $0.writeInteger(Int16(0)) }
                    return
                case "SELECT" where statement.contains("1/0"):
                    if implicit { settings = before } else { block = .failed }
                    return error(endsUnit: true)
                default:
                    output.writeDataRow(["1"])
                    output.writeCommandComplete("SELECT 1")
                }
            }
            if block == .none { committed = settings }
            ready()
        }

        /// An ErrorResponse; a Query's ends with its ReadyForQuery, an extended batch's waits for the Sync.
        mutating func error(endsUnit: Bool) {
            output.writeErrorResponse(severity: "ERROR", code: "22012", message: "division by zero")
            if block == .open { block = .failed }
            if endsUnit { ready() }
        }

        mutating func ready() {
            if block == .none { committed = settings }
            openUnit = false
            output.writeReadyForQuery(block == .none ? .idle : block == .open ? .inTransaction : .failed)
        }
    }

    static let requests: [(Double, String)] = [
        (3, "SELECT 1"), (1, "SELECT 1/0"), (1, "BEGIN"), (1, "COMMIT"), (1, "ROLLBACK"),
        (2, "SET a = 'x'"), (1, "SET a = 'y'"), (1, "SET b = 'z'"), (1, "RESET a"), (1, "COPY t FROM STDIN"),
    ]

    static func request(_ random: inout Random) -> ByteBuffer {
        var out = ByteBuffer()
        switch Int.random(in: 0..<10, using: &random) {
        case 0, 1:
            // An extended batch, sometimes failing.
            let sql = Bool.random(using: &random) ? "SELECT 1" : "SELECT 1/0"
            for var part in [Wire.parse("", sql), Wire.bind(""), Wire.execute(), Wire.sync()] { out.writeBuffer(&part) }
        default:
            let total = requests.reduce(0) { $0 + $1.0 }
            var pick = Double.random(in: 0..<total, using: &random)
            var sql = requests[0].1
            for (weight, text) in requests {
                if pick < weight { sql = text; break }
                pick -= weight
            }
            out.writeQuery(sql)
            if sql.hasPrefix("COPY") {
                var data = Wire.copyData(Int.random(in: 1..<200, using: &random))
                var done = Wire.copyDone()
                out.writeBuffer(&data)
                out.writeBuffer(&done)
            }
        }
        return out
    }

    /// `bytes` cut in 1–3 random pieces.
    static func pieces(_ bytes: ByteBuffer, _ random: inout Random) -> [ByteBuffer] {
        guard bytes.readableBytes > 1 else { return [bytes] }
        var cuts = (0..<Int.random(in: 0...2, using: &random)).map { _ in Int.random(in: 1..<bytes.readableBytes, using: &random) }
        cuts = Array(Set(cuts)).sorted()
        var result: [ByteBuffer] = []
        var start = 0
        for cut in cuts + [bytes.readableBytes] {
            result.append(bytes.getSlice(at: bytes.readerIndex + start, length: cut - start)!)
            start = cut
        }
        return result
    }

    /// The session given back agrees with the backend: every name is right or marked unknown.
    static func check(_ session: ServerSession, against backend: Backend, _ context: String) {
        let known = session.parameters.session
        for (name, value) in backend.settings where known[name] != value && known[name] != ParameterSet.unknownValue {
            Issue.record("backend has \(name)=\(value), Shoal believes \(known[name] ?? "nothing") — \(context)")
        }
        for (name, value) in known where value != ParameterSet.unknownValue && backend.settings[name] != value {
            Issue.record("Shoal believes \(name)=\(value), backend has \(backend.settings[name] ?? "nothing") — \(context)")
        }
    }

    @Test func randomClientLivesNeverReleaseADirtyOrBusyServer() throws {
        var random = Random(state: 0x5EED_1234)
        var backend = Backend()
        var pooled: ServerSession? = ServerSession()
        var releases = 0
        for life in 0..<5000 {
            let mode: PoolMode = Int.random(in: 0..<8, using: &random) == 0 ? .session : .transaction
            var options = LinkStateMachine.Options(mode: mode, detectsSessionState: true)
            options.maxMessageLength = 1 << 20
            // server_reset_query's default: session pooling relies on it, as in PgBouncer.
            if mode == .session { options.resetQueryOnDisconnect = "DISCARD ALL" }
            var machine = LinkStateMachine(options: options, now: 0)
            var cancels = 0
            var history: [String] = []
            func apply(_ action: LinkAction, _ what: String) {
                switch action {
                case .release(let session, let reset):
                    releases += 1
                    if !backend.owesNothing || cancels > 0 {
                        Issue.record("life \(life): released while the backend owes replies or a cancel is out after \(what); \(history.suffix(6))")
                    }
                    if let reset {
                        // DISCARD ALL / server_reset_query: the backend forgets its settings, and so does the view.
                        #expect(reset == "DISCARD ALL")
                        backend.settings = [:]
                        backend.committed = [:]
                        var clean = session
                        clean.parameters.resetAllSession()
                        pooled = clean
                    } else {
                        Self.check(session, against: backend, "life \(life) after \(what); \(history.suffix(6))")
                        pooled = session
                    }
                case .sendToServer(let bytes):
                    backend.receive(bytes)
                case .closeServer, .fatal:
                    if action.closesServer {
                        backend = Backend()
                        pooled = ServerSession()
                    }
                default:
                    break
                }
            }
            steps: for _ in 0..<Int.random(in: 1..<40, using: &random) {
                switch Int.random(in: 0..<20, using: &random) {
                case 0...7:
                    let bytes = Self.request(&random)
                    history.append("client \(bytes.readableBytes)B")
                    for piece in Self.pieces(bytes, &random) {
                        let read = try machine.clientBytes(piece, now: 0)
                        if let toServer = read.toServer { backend.receive(toServer) }
                        if read.requestServer {
                            guard let session = pooled else { continue }
                            pooled = nil
                            let step = machine.serverAssigned(session)
                            if case .giveBackUnused(let unused) = step.action { pooled = unused } else { apply(step.action, "link") }
                        }
                    }
                case 8...16 where machine.phase == .linked && backend.output.readableBytes > 0:
                    let available = backend.output.readableBytes
                    let take = Int.random(in: 1...available, using: &random)
                    let bytes = backend.output.readSlice(length: take)!
                    backend.output.discardReadBytes()
                    history.append("server \(take)B")
                    apply(machine.serverBytes(bytes) { true }.action, "server bytes")
                case 17, 18 where machine.phase == .linked:
                    if Bool.random(using: &random) {
                        if machine.cancelForwarded() { cancels += 1; history.append("cancel") }
                    } else if cancels > 0 {
                        cancels -= 1
                        history.append("cancel landed")
                        apply(machine.cancelFinished(), "cancel landed")
                    }
                case 19:
                    history.append("disconnect")
                    break steps
                default:
                    break
                }
                #expect(machine.pendingBytes < 1 << 16)
            }
            if Bool.random(using: &random) {
                // Half the clients wait for their answers before they go.
                while machine.phase == .linked && backend.output.readableBytes > 0 {
                    let bytes = backend.output.readSlice(length: backend.output.readableBytes)!
                    backend.output.discardReadBytes()
                    apply(machine.serverBytes(bytes) { true }.action, "final answers")
                }
            }
            // The client goes (Terminate or EOF); the server is given back clean or closed (then a fresh backend
            // replaces it, and the cancels still out land on the closed one).
            apply(machine.clientClosed(), "disconnect")
            if pooled == nil { backend = Backend(); pooled = ServerSession() }
        }
        #expect(releases > 1000, "the lives reached the interesting states")
    }
}

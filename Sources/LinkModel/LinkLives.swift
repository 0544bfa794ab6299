import Configuration
import NIOCore
import Pooling
import PostgresWire

/// Where a life's decisions come from: a seeded generator (the randomized test) or a fuzzer's input bytes.
public protocol LifeChoices {
    /// A number in `0..<count` (`count` ≥ 1).
    mutating func pick(_ count: Int) -> Int
    /// No more real choices: every pick answers 0 from now on (a fuzz input is used up).
    var exhausted: Bool { get }
}

/// Choices from any random number generator; never exhausted.
public struct GeneratorChoices<Generator: RandomNumberGenerator>: LifeChoices {
    public var generator: Generator
    public init(_ generator: Generator) { self.generator = generator }
    public mutating func pick(_ count: Int) -> Int { Int.random(in: 0..<count, using: &generator) }
    public var exhausted: Bool { false }
}

/// Choices read from bytes, one or two per pick; 0 once they run out.
public struct ByteChoices: LifeChoices {
    var bytes: [UInt8]
    var index = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var exhausted: Bool { index >= bytes.count }
    public mutating func pick(_ count: Int) -> Int {
        guard count > 1 else { return 0 }
        var value = 0
        for _ in 0..<(count > 256 ? 2 : 1) {
            guard index < bytes.count else { break }
            value = value << 8 | Int(bytes[index])
            index += 1
        }
        return value % count
    }
}

/// Client lives through `LinkStateMachine` against one `ModelBackend` they share in turn (transaction pooling with
/// one server): pipelines of simple and extended queries with errors, transaction blocks, COPY FROM STDIN, SET/RESET
/// in and out of blocks, cancels, disconnects at any point; every byte stream cut at chosen places. After every
/// event it checks, and reports as `violations`:
/// - the server is never given back while the model owes a reply, is in COPY, in a block, or a cancel is out;
/// - the session given back never holds a definite setting the backend does not have, and never misses one it
///   has (a leak to the next client) — a name may only be marked unknown, which forces a reset;
/// - what the machine holds of the client's bytes stays below one message.
public struct LinkLives {
    public private(set) var backend = ModelBackend()
    /// The pool's one server while no client holds it (nil: lent out).
    var pooled: ServerSession? = ServerSession()
    public private(set) var releases = 0
    public private(set) var violations: [String] = []

    public init() {}

    static let requests: [(Int, String)] = [
        (3, "SELECT 1"), (1, "SELECT 1/0"), (1, "BEGIN"), (1, "COMMIT"), (1, "ROLLBACK"),
        (2, "SET a = 'x'"), (1, "SET a = 'y'"), (1, "SET b = 'z'"), (1, "RESET a"), (1, "COPY t FROM STDIN"),
    ]

    static func request(_ choices: inout some LifeChoices) -> ByteBuffer {
        var out = ByteBuffer()
        switch choices.pick(10) {
        case 0, 1:
            // An extended batch, sometimes failing.
            let sql = choices.pick(2) == 0 ? "SELECT 1" : "SELECT 1/0"
            out = Wire.join(Wire.parse("", sql), Wire.bind(""), Wire.execute(), Wire.sync())
        default:
            var pick = choices.pick(requests.reduce(0) { $0 + $1.0 })
            var sql = requests[0].1
            for (weight, text) in requests {
                if pick < weight { sql = text; break }
                pick -= weight
            }
            out.writeQuery(sql)
            if sql.hasPrefix("COPY") {
                var copy = Wire.join(Wire.copyData(1 + choices.pick(199)), Wire.copyDone())
                out.writeBuffer(&copy)
            }
        }
        return out
    }

    /// `bytes` cut in 1–3 chosen pieces.
    static func pieces(_ bytes: ByteBuffer, _ choices: inout some LifeChoices) -> [ByteBuffer] {
        guard bytes.readableBytes > 1 else { return [bytes] }
        var cuts = Set<Int>()
        for _ in 0..<choices.pick(3) { cuts.insert(1 + choices.pick(bytes.readableBytes - 1)) }
        var result: [ByteBuffer] = []
        var start = 0
        for cut in cuts.sorted() + [bytes.readableBytes] {
            result.append(bytes.getSlice(at: bytes.readerIndex + start, length: cut - start)!)
            start = cut
        }
        return result
    }

    /// The session given back agrees with the backend: every name is right or marked unknown.
    mutating func check(_ session: ServerSession, _ context: String) {
        let known = session.parameters.session
        for (name, value) in backend.settings where known[name] != value && known[name] != ParameterSet.unknownValue {
            violations.append("backend has \(name)=\(value), Shoal believes \(known[name] ?? "nothing") — \(context)")
        }
        for (name, value) in known where value != ParameterSet.unknownValue && backend.settings[name] != value {
            violations.append("Shoal believes \(name)=\(value), backend has \(backend.settings[name] ?? "nothing") — \(context)")
        }
    }

    /// One client: connects, sends up to 40 chosen events, and goes (Terminate or EOF), half the time after waiting
    /// for its answers. A frame error from the machine would be a violation too: these clients send valid frames.
    public mutating func live(_ life: Int, _ choices: inout some LifeChoices) {
        let mode: PoolMode = choices.pick(8) == 0 ? .session : .transaction
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
                    violations.append("life \(life): released while the backend owes replies or a cancel is out after \(what); \(history.suffix(6))")
                }
                if let reset {
                    // DISCARD ALL / server_reset_query: the backend forgets its settings, and so does the view.
                    if reset != "DISCARD ALL" { violations.append("life \(life): reset query \(reset)") }
                    backend = ModelBackend()
                    var clean = session
                    clean.parameters.resetAllSession()
                    pooled = clean
                } else {
                    check(session, "life \(life) after \(what); \(history.suffix(6))")
                    pooled = session
                }
            case .sendToServer(let bytes):
                backend.receive(bytes)
            case .closeServer, .fatal:
                if action.closesServer {
                    backend = ModelBackend()
                    pooled = ServerSession()
                }
            default:
                break
            }
        }

        steps: for _ in 0..<(1 + choices.pick(39)) {
            switch choices.pick(20) {
            case 0...7:
                let bytes = Self.request(&choices)
                history.append("client \(bytes.readableBytes)B")
                for piece in Self.pieces(bytes, &choices) {
                    let read: LinkStateMachine.ClientRead
                    do {
                        read = try machine.clientBytes(piece, now: 0)
                    } catch {
                        violations.append("life \(life): valid client bytes refused: \(error)")
                        return
                    }
                    if let toServer = read.toServer { backend.receive(toServer) }
                    if read.requestServer {
                        guard let session = pooled else { continue }
                        pooled = nil
                        let step = machine.serverAssigned(session)
                        if case .giveBackUnused(let unused) = step.action { pooled = unused } else { apply(step.action, "link") }
                    }
                }
            case 8...16 where machine.phase == .linked && backend.output.readableBytes > 0:
                let take = 1 + choices.pick(backend.output.readableBytes)
                let bytes = backend.output.readSlice(length: take)!
                backend.output.discardReadBytes()
                history.append("server \(take)B")
                apply(machine.serverBytes(bytes) { true }.action, "server bytes")
            case 17...18 where machine.phase == .linked:
                if choices.pick(2) == 0 {
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
            if machine.pendingBytes >= 1 << 16 { violations.append("life \(life): \(machine.pendingBytes) client bytes held") }
            if choices.exhausted { break }
        }
        if choices.pick(2) == 0 {
            // Half the clients wait for their answers before they go.
            while machine.phase == .linked && backend.output.readableBytes > 0 {
                let bytes = backend.output.readSlice(length: backend.output.readableBytes)!
                backend.output.discardReadBytes()
                apply(machine.serverBytes(bytes) { true }.action, "final answers")
            }
        }
        // The client goes; the server is given back clean or closed (then a fresh backend replaces it, and the
        // cancels still out land on the closed one).
        apply(machine.clientClosed(), "disconnect")
        if pooled == nil { backend = ModelBackend(); pooled = ServerSession() }
    }
}

extension LinkAction {
    /// The glue closes the server for this action (a FATAL that names a server reason closes it too).
    public var closesServer: Bool {
        switch self {
        case .closeServer: return true
        case .fatal(_, _, let reason): return reason != nil
        default: return false
        }
    }
}

import AdminConsole
import NIOCore
import PostgresWire

/// One admin console session: reads statements, runs them one at a time (PAUSE and WAIT_CLOSE may take a while;
/// what the client pipelines meanwhile waits its turn), and writes each reply in order. Lives on its client's loop.
///
/// Beyond PgBouncer, parameterless extended-protocol statements are answered too (Parse/Bind/Describe/Execute/
/// Sync), so drivers that always use it — psycopg 3's default cursor — work without a client-side cursor.
final class AdminSession {
    enum Access { case admin, readOnly }

    let access: Access
    private let runtime: ShoalRuntime
    /// Weak: a PAUSE or WAIT_CLOSE may complete after the client has gone.
    private weak var client: ClientConnection?
    private let eventLoop: EventLoop
    private let allocator: ByteBufferAllocator
    private var scanner = FrameScanner(maxMessageLength: 1 << 20)
    private var queue: [(type: UInt8, body: ByteBuffer)] = []
    private var busy = false
    // Extended protocol: statement texts by name, the bound portal's text, and its reply once run by Describe.
    private var statements: [String: String] = [:]
    private var portal: (sql: String, reply: AdminReply?)?
    private var skippingToSync = false

    init(access: Access, runtime: ShoalRuntime, client: ClientConnection, allocator: ByteBufferAllocator) {
        self.access = access
        self.runtime = runtime
        self.client = client
        self.eventLoop = client.eventLoop
        self.allocator = allocator
    }

    /// The console's welcome, as PgBouncer sends it.
    func writeWelcome(into buffer: inout ByteBuffer, key: (processID: Int32, secretKey: Int32)) {
        let parameters = [("server_version", "\(ShowTables.pgbouncerVersion)/bouncer"), ("client_encoding", "UTF8"),
                          ("server_encoding", "UTF8"), ("DateStyle", "ISO"), ("TimeZone", "GMT"),
                          ("standard_conforming_strings", "on"), ("is_superuser", access == .admin ? "on" : "off")]
        for (name, value) in parameters { buffer.writeParameterStatus(name: name, value: value) }
        buffer.writeBackendKeyData(processID: key.processID, secretKey: key.secretKey)
        buffer.writeReadyForQuery(.idle)
    }

    func bytesReceived(_ buffer: ByteBuffer) {
        var visitor = LoginVisitor()
        do {
            _ = try scanner.scan(buffer, visitor: &visitor)
        } catch {
            client?.fatal("bad packet header")
            return
        }
        queue.append(contentsOf: visitor.messages.map { (type: $0.0, body: $0.1) })
        processQueue()
    }

    // MARK: Messages

    private func processQueue() {
        while !busy, !queue.isEmpty {
            let (type, body) = queue.removeFirst()
            handle(type: type, body: body)
        }
    }

    private func handle(type: UInt8, body: ByteBuffer) {
        var body = body
        if skippingToSync && type != FrontendMessage.sync && type != FrontendMessage.terminate { return }
        switch type {
        case FrontendMessage.query:
            let sql = body.readNullTerminatedString() ?? ""
            run(sql) { [self] reply in
                var out = allocator.buffer(capacity: 256)
                if reply == nil { out.writePostgresMessage(BackendMessage.emptyQueryResponse) { _ in } }
                reply?.write(into: &out)
                out.writeReadyForQuery(.idle)
                send(out)
            }
        case FrontendMessage.parse:
            guard let name = body.readNullTerminatedString(), let sql = body.readNullTerminatedString() else {
                return protocolError("invalid Parse message")
            }
            statements[name] = sql
            send(message(UInt8(ascii: "1")))
        case FrontendMessage.bind:
            guard body.readNullTerminatedString() != nil, let statement = body.readNullTerminatedString(),
                  let sql = statements[statement] else {
                return extendedError(AdminError("prepared statement does not exist"))
            }
            guard Self.parametersAbsentAndResultsText(&body) else {
                return extendedError(AdminError("the admin console takes no parameters and answers in text format only"))
            }
            portal = (sql, nil)
            send(message(UInt8(ascii: "2")))
        case FrontendMessage.describe:
            let kind = body.readInteger(as: UInt8.self)
            guard let current = portal, kind == UInt8(ascii: "P") else {
                // Describing a statement: no parameters; its columns are known once it runs.
                var out = allocator.buffer(capacity: 16)
                out.writePostgresMessage(UInt8(ascii: "t")) { $0.writeInteger(Int16(0)) }
                out.writePostgresMessage(UInt8(ascii: "n")) { _ in }
                return send(out)
            }
            run(current.sql) { [self] reply in
                let reply = reply ?? .done(tag: "")
                portal = (current.sql, reply)
                var out = allocator.buffer(capacity: 256)
                reply.writeDescription(into: &out)
                send(out)
            }
        case FrontendMessage.execute:
            guard let current = portal else { return extendedError(AdminError("portal does not exist")) }
            if let reply = current.reply {
                portal = nil
                return sendExecuted(reply)
            }
            run(current.sql) { [self] reply in
                portal = nil
                sendExecuted(reply ?? .done(tag: ""))
            }
        case FrontendMessage.sync:
            skippingToSync = false
            var out = allocator.buffer(capacity: 6)
            out.writeReadyForQuery(.idle)
            send(out)
        case FrontendMessage.flush:
            break
        case FrontendMessage.close:
            send(message(UInt8(ascii: "3")))
        case FrontendMessage.terminate:
            client?.consoleClose(reason: "client close request")
        default:
            protocolError("unsupported packet type for admin console: \(type)")
        }
    }

    private func sendExecuted(_ reply: AdminReply) {
        var out = allocator.buffer(capacity: 256)
        reply.write(into: &out, described: true)
        if case .error = reply { skippingToSync = true }
        send(out)
    }

    /// Runs one statement; `completion` gets the reply (nil for an empty statement) on this loop.
    private func run(_ sql: String, completion: @escaping (AdminReply?) -> Void) {
        let command: AdminCommand?
        do {
            command = try AdminCommandParser.parse(sql)
        } catch {
            runtime.logger.error("\(error.message)")
            return completion(.error(error))
        }
        guard let command else { return completion(nil) }
        if access == .readOnly && !command.isReadOnly && !Self.isFakeSet(command) {
            let error = AdminError("admin access needed")
            runtime.logger.error("\(error.message)")
            return completion(.error(error))
        }
        busy = true
        AdminExecutor(runtime: runtime, access: access).run(command).hop(to: eventLoop).whenComplete { [self] result in
            busy = false
            let reply: AdminReply
            switch result {
            case .success(let value): reply = value
            case .failure(let error): reply = .error(AdminError("\(error)"))
            }
            if case .error(let error) = reply { runtime.logger.error("\(error.message)") }
            completion(reply)
            processQueue()
        }
    }

    private static func isFakeSet(_ command: AdminCommand) -> Bool {
        guard case .set(let key, _) = command else { return false }
        return AdminExecutor.fakeParameters.contains(key.lowercased())
    }

    /// Bind's remaining fields: no parameter values, and text (0) for every result column.
    private static func parametersAbsentAndResultsText(_ body: inout ByteBuffer) -> Bool {
        guard let formatCount = body.readInteger(as: Int16.self), formatCount >= 0 else { return false }
        _ = body.readSlice(length: Int(formatCount) * 2)
        guard let parameterCount = body.readInteger(as: Int16.self), parameterCount == 0 else { return false }
        guard let resultCount = body.readInteger(as: Int16.self), resultCount >= 0 else { return false }
        for _ in 0..<resultCount {
            guard body.readInteger(as: Int16.self) == 0 else { return false }
        }
        return true
    }

    // MARK: Output

    private func message(_ type: UInt8) -> ByteBuffer {
        var out = allocator.buffer(capacity: 5)
        out.writePostgresMessage(type) { _ in }
        return out
    }

    private func send(_ buffer: ByteBuffer) {
        client?.consoleWrite(buffer)
    }

    /// An error inside an extended-protocol batch: reported, then everything up to Sync is skipped.
    private func extendedError(_ error: AdminError) {
        var out = allocator.buffer(capacity: 64)
        AdminReply.error(error).write(into: &out)
        skippingToSync = true
        send(out)
    }

    /// A message the console cannot take: ERROR, then the session ends, as in PgBouncer.
    private func protocolError(_ message: String) {
        runtime.logger.error("\(message)")
        var out = allocator.buffer(capacity: 64)
        out.writeErrorResponse(severity: "ERROR", code: "08P01", message: message)
        send(out)
        client?.consoleClose(reason: message)
    }
}

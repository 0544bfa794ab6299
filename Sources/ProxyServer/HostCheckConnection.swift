import Configuration
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Pooling
import PostgresWire

/// A connection Shoal itself queries on: a host's health checks (kept open between checks so that a full pool
/// never blinds the checker and a check costs one round trip, not a backend fork), and auth_query lookups
/// (`AuthLookups`). TLS as server_tls_sslmode says, like the pools' server connections.
///
/// Lives on one EventLoop; `run` is called there. Each run sends one request — a simple Query (which may hold
/// several statements), or one statement with bound parameters — and answers with the rows of every
/// statement, or an error.
final class HostCheckConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Login {
        var user: String
        var database: String
        var secret: ServerLoginMachine.Secret
        var tls: NIOSSLContext?
        var tlsRequired: Bool
        var connectTimeout: Double
        var applicationName = "shoal health check"
    }

    enum Request {
        case simple(String)
        /// One statement with text parameters (Parse/Bind/Describe/Execute/Sync): values are never spliced
        /// into the SQL.
        case bound(String, [String?])
    }

    /// The rows of each statement in the Query, and the first error (the statements after it did not run).
    struct Answer {
        var results: [[[String?]]] = []
        var error: ErrorFields?
    }

    enum State { case connecting, requestingTLS, handshakingTLS, loggingIn(ServerLoginMachine), idle, querying, closed }

    let address: HostAddress
    let eventLoop: EventLoop
    private let login: Login
    private var state: State = .connecting
    private var context: ChannelHandlerContext?
    private var scanner = FrameScanner(maxMessageLength: 1 << 20)
    private var pendingQuery: Request?
    private var answer = Answer()
    private var completion: ((Result<Answer, CheckFailure>) -> Void)?

    struct CheckFailure: Error {
        var reason: String
        /// The server answered but refused the check's login (wrong health_check_user or password, no such
        /// database): a configuration problem, not a sign that the host is down.
        var refusedLogin = false
    }

    private init(address: HostAddress, eventLoop: EventLoop, login: Login) {
        self.address = address
        self.eventLoop = eventLoop
        self.login = login
    }

    var isOpen: Bool {
        if case .closed = state { return false }
        return true
    }

    /// Requests handed to this connection so far (the first one at `open`).
    private(set) var requestsStarted = 0

    /// Whether request number `request` is still unanswered (connecting, logging in or querying).
    func stillRunning(request: Int) -> Bool {
        guard requestsStarted == request else { return false }
        switch state {
        case .idle, .closed: return false
        case .connecting, .requestingTLS, .handshakingTLS, .loggingIn, .querying: return true
        }
    }

    /// Opens a connection and runs `query` on it once logged in.
    static func open(address: HostAddress, login: Login, on eventLoop: EventLoop, query: Request,
                     completion: @escaping (Result<Answer, CheckFailure>) -> Void) -> HostCheckConnection {
        let handler = HostCheckConnection(address: address, eventLoop: eventLoop, login: login)
        handler.pendingQuery = query
        handler.completion = completion
        handler.requestsStarted = 1
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(Int64(login.connectTimeout * 1000)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if !address.isUnixSocket { try channel.syncOptions?.setOption(.tcpOption(.tcp_nodelay), value: 1) }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let connected = address.isUnixSocket
            ? bootstrap.connect(unixDomainSocketPath: "\(address.host)/.s.PGSQL.\(address.port)")
            : bootstrap.connect(host: address.host, port: address.port)
        connected.whenFailure { error in handler.fail("connect failed: \(error)") }
        return handler
    }

    /// Runs another request on the open, idle connection. Returns false if it is not idle.
    func run(_ query: Request, completion: @escaping (Result<Answer, CheckFailure>) -> Void) -> Bool {
        guard case .idle = state, let context else { return false }
        self.completion = completion
        requestsStarted += 1
        send(query, context: context)
        return true
    }

    /// Gives up on the check in flight (timeout) and closes.
    func abandon(reason: String) {
        fail(reason)
    }

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        if login.tls != nil && !address.isUnixSocket {
            state = .requestingTLS
            var request = context.channel.allocator.buffer(capacity: 8)
            request.writeSSLRequest()
            context.writeAndFlush(wrapOutboundOut(request), promise: nil)
        } else {
            startLogin(context: context)
        }
    }

    private func startLogin(context: ChannelHandlerContext) {
        state = .loggingIn(ServerLoginMachine(user: login.user, secret: login.secret))
        var startup = context.channel.allocator.buffer(capacity: 96)
        startup.writeStartupMessage(parameters: [("user", login.user), ("database", login.database),
                                                 ("application_name", login.applicationName)])
        context.writeAndFlush(wrapOutboundOut(startup), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if case .requestingTLS = state { return tlsAnswerReceived(buffer, context: context) }
        var visitor = LoginVisitor()
        do {
            _ = try scanner.scan(buffer, visitor: &visitor)
        } catch {
            return fail("bad packet from server")
        }
        for (type, body) in visitor.messages {
            switch state {
            case .loggingIn(var machine):
                switch machine.messageReceived(type: type, body: body) {
                case .wait: state = .loggingIn(machine)
                case .send(let bytes):
                    state = .loggingIn(machine)
                    context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
                case .fail(let message, let code):
                    // Refused by the server itself (28xxx, 3D000…) vs. the server going away during login.
                    return fail("login failed: \(message)", refusedLogin: !ServerLoginMachine.isHostFailure(code: code, message: message))
                case .ready:
                    state = .idle
                    if let query = pendingQuery {
                        pendingQuery = nil
                        send(query, context: context)
                    }
                }
            case .querying:
                received(type: type, body: body)
            case .connecting, .requestingTLS, .handshakingTLS, .idle, .closed:
                continue
            }
        }
    }

    private func tlsAnswerReceived(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        switch buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) {
        case UInt8(ascii: "S"):
            guard let tls = login.tls else { return fail("TLS setup failed") }
            do {
                let handler = try NIOSSLClientHandler(context: tls, serverHostname: address.isIPLiteral ? nil : address.host)
                try context.pipeline.syncOperations.addHandler(handler, position: .first)
                state = .handshakingTLS
            } catch {
                fail("TLS setup failed: \(error)")
            }
        case UInt8(ascii: "N") where !login.tlsRequired:
            startLogin(context: context)
        default:
            fail("server does not support SSL, but SSL was required")
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakingTLS = state, let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            startLogin(context: context)
        }
    }

    private func send(_ request: Request, context: ChannelHandlerContext) {
        state = .querying
        answer = Answer()
        var out = context.channel.allocator.buffer(capacity: 256)
        switch request {
        case .simple(let query):
            out.writeQuery(query)
        case .bound(let statement, let parameters):
            out.writeBoundStatement(statement, parameters: parameters)
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    private func received(type: UInt8, body: ByteBuffer) {
        var body = body
        switch type {
        case BackendMessage.rowDescription:
            answer.results.append([])
        case BackendMessage.dataRow:
            guard !answer.results.isEmpty, let count = body.readInteger(as: Int16.self) else { return }
            var values: [String?] = []
            for _ in 0..<max(0, Int(count)) {
                guard let length = body.readInteger(as: Int32.self) else { break }
                values.append(length < 0 ? nil : body.readString(length: Int(length)))
            }
            answer.results[answer.results.count - 1].append(values)
        case BackendMessage.errorResponse:
            if answer.error == nil { answer.error = ErrorFields(body: body) }
        case BackendMessage.readyForQuery:
            state = .idle
            let done = completion
            completion = nil
            done?(.success(answer))
        default:
            return
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.context = nil
        fail("server closed the connection")
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail("\(error)")
    }

    private func fail(_ reason: String, refusedLogin: Bool = false) {
        // Taken first: closing runs channelInactive at once, which would report its own reason instead.
        let done = completion
        completion = nil
        let wasOpen = isOpen
        state = .closed
        if wasOpen, let context {
            var terminate = context.channel.allocator.buffer(capacity: 5)
            terminate.writeTerminate()
            context.writeAndFlush(wrapOutboundOut(terminate), promise: nil)
            context.close(promise: nil)
        }
        done?(.failure(CheckFailure(reason: reason, refusedLogin: refusedLogin)))
    }
}

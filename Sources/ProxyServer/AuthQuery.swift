import Configuration
import NIOCore
import NIOPosix
import Pooling
import PostgresWire

/// Looks up a user's secret with auth_query, logged in as auth_user on a connection of its own
/// (one per lookup, closed after; the query runs with the user name as a bound parameter, never spliced in).
final class AuthQueryConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Outcome {
        /// The secret (nil when the row's secret is NULL, e.g. an expired password).
        case found(String?)
        case noSuchUser
        case failed(String)
    }

    private let query: String
    private let user: String
    private var login: ServerLoginMachine
    private let startup: [(String, String)]
    private var scanner = FrameScanner(maxMessageLength: 1 << 20)
    private var loggedIn = false
    private var row: [String?]?
    private var error: String?
    private var completion: ((Outcome) -> Void)?

    private init(query: String, user: String, authUser: String, secret: ServerLoginMachine.Secret, database: String,
                 completion: @escaping (Outcome) -> Void) {
        self.query = query
        self.user = user
        self.login = ServerLoginMachine(user: authUser, secret: secret)
        self.startup = [("user", authUser), ("database", database)]
        self.completion = completion
    }

    /// Runs the lookup on `eventLoop`; `completion` is called once, on that loop.
    static func lookUp(user: String, database: DatabaseEntry, runtime: ShoalRuntime, on eventLoop: EventLoop,
                       completion: @escaping (Outcome) -> Void) {
        let config = runtime.config
        guard let authUser = database.authUser ?? config.authUser else { return completion(.noSuchUser) }
        // auth_dbname names a [databases] entry (PgBouncer's meaning): the query runs where that entry points.
        var target = database
        if let name = database.authDbname ?? config.authDbname {
            guard !config.isConsoleDatabase(name), let entry = config.database(named: name) else {
                return completion(.failed("authentication database \"\(name)\" is not configured"))
            }
            if runtime.lifecycle.withLockedValue({ $0.disabledDatabases.contains(name) }) {
                return completion(.failed("authentication database \"\(name)\" is disabled"))
            }
            target = entry
        }
        var secret = ServerLoginSecret(authFileSecret: runtime.userList.secrets[authUser]).loginSecret
        if case .none = secret, let password = target.password ?? database.password { secret = .password(password) }
        let handler = AuthQueryConnection(
            query: database.authQuery ?? config.authQuery, user: user, authUser: authUser, secret: secret,
            database: target.dbname ?? target.name, completion: completion)
        // Several hosts: the writer, or any host up (a down first host must not stop logins during a failover).
        let address = runtime.hosts.lookupHost(for: target, config: config)
        let host = address.host
        let port = address.port
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(Int64(config.serverConnectTimeout * 1000)))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
        let connected = host.hasPrefix("/")
            ? bootstrap.connect(unixDomainSocketPath: "\(host)/.s.PGSQL.\(port)")
            : bootstrap.connect(host: host, port: port)
        connected.whenFailure { error in handler.finish(.failed("auth_query connect failed: \(error)")) }
        eventLoop.scheduleTask(in: .milliseconds(Int64(config.serverConnectTimeout * 1000))) {
            handler.finish(.failed("auth_query timeout"))
        }
    }

    private var context: ChannelHandlerContext?

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        var buffer = context.channel.allocator.buffer(capacity: 64)
        buffer.writeStartupMessage(parameters: startup)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var visitor = LoginVisitor()
        do {
            _ = try scanner.scan(unwrapInboundIn(data), visitor: &visitor)
        } catch {
            return finish(.failed("bad packet from server during auth_query"))
        }
        for (type, body) in visitor.messages {
            if !loggedIn {
                switch login.messageReceived(type: type, body: body) {
                case .wait: continue
                case .send(let bytes): context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
                case .fail(let message, _): return finish(.failed("S: error in auth_query login: \(message)"))
                case .ready:
                    loggedIn = true
                    sendQuery(context: context)
                }
                continue
            }
            var body = body
            switch type {
            case BackendMessage.dataRow:
                guard row == nil, let count = body.readInteger(as: Int16.self) else { continue }
                var values: [String?] = []
                for _ in 0..<max(0, Int(count)) {
                    guard let length = body.readInteger(as: Int32.self) else { break }
                    values.append(length < 0 ? nil : body.readString(length: Int(length)))
                }
                row = values
            case BackendMessage.errorResponse:
                error = ErrorFields(body: body).message
            case BackendMessage.readyForQuery:
                if let error { return finish(.failed("S: error in auth_query: \(error)")) }
                guard let row else { return finish(.noSuchUser) }
                return finish(.found(row.count >= 2 ? row[1] : nil))
            default:
                continue
            }
        }
    }

    private func sendQuery(context: ChannelHandlerContext) {
        var out = context.channel.allocator.buffer(capacity: 256)
        out.writePostgresMessage(FrontendMessage.parse) {
            $0.writeCString("")
            $0.writeCString(query)
            $0.writeInteger(Int16(0))
        }
        out.writePostgresMessage(FrontendMessage.bind) {
            $0.writeCString("")
            $0.writeCString("")
            $0.writeInteger(Int16(0))
            $0.writeInteger(Int16(1))
            $0.writeInteger(Int32(user.utf8.count))
            $0.writeString(user)
            $0.writeInteger(Int16(0))
        }
        out.writePostgresMessage(FrontendMessage.execute) {
            $0.writeCString("")
            $0.writeInteger(Int32(0))
        }
        out.writePostgresMessage(FrontendMessage.sync) { _ in }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failed("auth_query: server closed the connection"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func finish(_ outcome: Outcome) {
        guard let completion else { return }
        self.completion = nil
        if let context {
            var terminate = context.channel.allocator.buffer(capacity: 5)
            terminate.writeTerminate()
            context.writeAndFlush(wrapOutboundOut(terminate), promise: nil)
            context.close(promise: nil)
        }
        completion(outcome)
    }
}

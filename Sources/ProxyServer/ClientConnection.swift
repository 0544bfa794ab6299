import AdminConsole
import Configuration
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import Pooling
import PostgresWire

/// One client of Shoal, from its startup packet to its goodbye.
///
/// All fields live on the client channel's EventLoop. Server bytes arrive here (directly when the server
/// shares the loop, through `execute` when it does not), so the client owns its link: once logged in, every
/// decision is its `LinkStateMachine`'s, and this class carries out what the machine answers
/// (`ClientConnection+Link`).
final class ClientConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        case startup
        case authenticating
        /// Authenticated; waiting for a first server login to learn the welcome parameters.
        case waitingForWelcome
        /// Logged in and pooled: idle, queued for a server or linked to one (`link.phase`).
        case pooled
        /// An admin console session (database `pgbouncer` or `shoal`).
        case console
        case closed
    }

    let id: Int
    let runtime: ShoalRuntime
    let eventLoop: EventLoop
    let loopIndex: Int
    var context: ChannelHandlerContext?
    var state: State = .startup
    let connectedAt = NIODeadline.now()
    /// Wall-clock time of connect and of the last request, for SHOW CLIENTS.
    let connectedAtWall = Date()
    var peerDescription = "unknown"
    var remoteHost = "unix"
    var remotePort = 0
    var localHost = "unix"
    var localPort = 0
    /// TLS terminated here (the client sent SSLRequest and got 'S'), and its protocol for logs and SHOW CLIENTS.
    var tlsActive = false
    var tlsDescription: String?
    var isUnixSocket = false
    /// The peer's uid and pid on a Unix socket (SO_PEERCRED): PgBouncer's passwordless console rule, remote_pid.
    var peerUID: UInt32?
    var peerPID: Int32 = 0

    // Login
    /// What only the login needs (about 600 bytes), dropped once the client is welcomed: 10,000 idle clients
    /// should not carry their auth machines and database entries.
    final class LoginState {
        var startupBuffer: ByteBuffer?
        var auth: ClientAuthMachine?
        /// The secret the client was checked against (auth file or auth_query), for server logins as this user.
        var authSecret: String?
        var authScanner = FrameScanner(maxMessageLength: 65_536)
        var startupParameters: [(String, String)] = []
        var databaseEntry: DatabaseEntry?
        /// A replication client's startup parameters for its dedicated server (tracked ones, and `options` as sent).
        var replicationParameters: [(String, String)] = []
        /// Watched by the loop's sweeper for client_login_timeout.
        var watchedForTimeout = false
        /// Turned away at accept (LoginLimits): answered with this FATAL once the startup packet comes, so the
        /// client's driver reads it (after declining an SSLRequest) instead of a bare close.
        var refusal: String?
    }
    var loginState: LoginState? = LoginState()
    var user = ""
    var databaseName = ""
    var counted = false
    /// Counted in the runtime's LoginLimits as a connection of `remoteHost` waiting to log in.
    var pendingLogin = false
    /// Counted in max_db_client_connections / max_user_client_connections (`ClientLimits`).
    var countedPerDatabaseAndUser = false
    /// The startup packet asked for a replication connection (nil for every other client). One byte: every idle
    /// client carries it.
    var replication: ReplicationMode?

    enum ReplicationMode: UInt8 {
        case physical, logical

        /// What the dedicated server's startup packet says.
        var startupValue: String { self == .logical ? "database" : "true" }
        /// PgBouncer's words: SHOW CLIENTS/SERVERS `replication` and the login line.
        var shown: String { self == .logical ? "logical" : "physical" }
        var loginLine: String { self == .logical ? "database" : "yes" }
    }
    var cancelKey: (processID: Int32, secretKey: Int32)?

    // Pooling
    var pool: Pool?
    /// Everything decided while the client is pooled: what goes where, when its server goes back (`LinkStateMachine`).
    var link: LinkStateMachine
    /// The server of the current link; the machine holds its session meanwhile.
    var server: ServerConnection?

    // Statistics: this loop's shard of the pool's counters, and the start of what is being timed (0 = none).
    var statsShard: PoolStatsShard?
    var queryStartedAt: UInt64 = 0
    var transactionStartedAt: UInt64 = 0
    var waitStartedAt: UInt64 = 0

    /// The console session, when this client logged in to the admin database.
    var console: AdminSession?
    var isConsole: Bool { console != nil }
    /// Accepted on readonly_listen_port: served by replicas.
    let readOnlyRoute: Bool
    var registeredWithSweeper = false
    /// The config the link's options were built from: a newer one reaches this client between transactions.
    var linkSnapshot: ConfigSnapshot?
    var needsFlush = false
    var readPauses: ReadPause = []

    /// ClientConnection objects alive in this process (a leak check for the tests).
    static let alive = NIOLockedValueBox(0)

    deinit { Self.alive.withLockedValue { $0 -= 1 } }

    init(runtime: ShoalRuntime, eventLoop: EventLoop, readOnlyRoute: Bool = false) {
        Self.alive.withLockedValue { $0 += 1 }
        self.readOnlyRoute = readOnlyRoute
        self.id = runtime.makeConnectionID()
        self.runtime = runtime
        self.eventLoop = eventLoop
        self.loopIndex = runtime.loopIndex(of: eventLoop)
        // Replaced at login with the pool's options; until then it only collects the startup parameters.
        self.link = LinkStateMachine(sharedOptions: Self.loginOptions, now: 0)
    }

    /// The link options before login, one for all clients (no allocation per connection).
    private static let loginOptions = LinkStateMachine.SharedOptions(.init(mode: .session))

    // MARK: Channel events

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        runtime.registries[loopIndex].add(self)
        if let remote = context.channel.remoteAddress {
            switch remote {
            case .unixDomainSocket:
                isUnixSocket = true
                peerDescription = "unix:\(runtime.snapshot.config.listenPort)"
                remotePort = runtime.snapshot.config.listenPort
                localPort = remotePort
                // SO_PEERCRED (17 on Linux; Glibc's module hides it and struct ucred behind _GNU_SOURCE).
                (context.channel as? SocketOptionProvider)?
                    .unsafeGetSocketOption(level: .init(SOL_SOCKET), name: .init(17))
                    .whenSuccess { [weak self] (credentials: PeerCredentials) in
                        self?.peerUID = credentials.uid
                        self?.peerPID = credentials.pid
                    }
            case .v6:
                remoteHost = remote.hostText ?? "?"
                peerDescription = "[\(remoteHost)]:\(remote.port ?? 0)"
            default:
                remoteHost = remote.hostText ?? "?"
                peerDescription = "\(remoteHost):\(remote.port ?? 0)"
            }
            if remote.protocol != .unix {
                remotePort = remote.port ?? 0
                let local = context.channel.localAddress
                localHost = local?.hostText ?? "?"
                localPort = local?.port ?? 0
            }
        }
        if !isUnixSocket {
            switch runtime.loginStarted(from: remoteHost) {
            case .unlimited: break
            case .counted: pendingLogin = true
            case .refused(let refusal):
                logger.warning("\(refusal.message)")
                loginState?.refusal = refusal.message
            }
        }
        // max_client_conn counts a client from accept (PgBouncer's rule), so connections that never log in count
        // too; one past the limit is refused when its startup packet arrives, unless it is for the console.
        counted = runtime.admitClient()
        let timeout = runtime.snapshot.config.clientLoginTimeout
        if timeout > 0 {
            runtime.sweepers[loopIndex].watchLogin(self, deadline: .now() + .milliseconds(Int64(timeout * 1000)))
            loginState?.watchedForTimeout = true
        }
    }

    /// client_login_timeout passed (the sweeper found the deadline behind it).
    func loginTimedOut() {
        loginState?.watchedForTimeout = false
        guard state == .startup || state == .authenticating || state == .waitingForWelcome else { return }
        fatal(state == .waitingForWelcome ? "client_login_timeout (server down)" : "client_login_timeout")
    }

    /// The login is over (welcomed, the console, or closed): what only the login needed goes, the login watch
    /// lets go and the address's pending count drops.
    func endLoginState() {
        if loginState?.watchedForTimeout == true { runtime.sweepers[loopIndex].loginEnded(self) }
        loginState = nil
        endPendingLogin()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        switch state {
        case .startup:
            startupBytesReceived(buffer)
        case .authenticating:
            authBytesReceived(buffer)
        case .pooled, .waitingForWelcome:
            clientBytesReceived(buffer)
        case .console:
            console?.bytesReceived(buffer)
        case .closed:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if let server, server.eventLoop === eventLoop {
            server.flush()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // Backpressure: stop reading the server while the client cannot take more.
        server?.setReadPaused(!context.channel.isWritable)
    }

    func channelInactive(context: ChannelHandlerContext) {
        disconnected(reason: "client unexpected eof")
        self.context = nil
    }

    /// The context holds this handler and this handler held the context: let go, or every client ever
    /// connected would stay in memory.
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Not the error's own description: a client can cause TLS errors, whose text names the build's source files.
        logger.debug("client connection error: \(error is NIOSSLError || error is BoringSSLError ? TLSFailureText.describe(error) : "\(error)")")
        context.close(promise: nil)
    }

    // MARK: Closing

    /// The login phase is over (logged in, or gone): the address's pending count drops.
    private func endPendingLogin() {
        guard pendingLogin else { return }
        pendingLogin = false
        runtime.loginEnded(from: remoteHost)
    }

    /// Sends a FATAL ErrorResponse with PgBouncer's wording and closes.
    func fatal(_ message: String, code: String = "08P01") {
        guard state != .closed, let context else { return }
        // PgBouncer's order: "closing because: …" is logged (and what the client held released) before the error
        // is sent, so whoever reads the log after the client saw its FATAL finds the line.
        disconnected(reason: message)
        if runtime.snapshot.config.logPoolerErrors {
            logger.warning("pooler error: \(message)")
        }
        var out = context.channel.allocator.buffer(capacity: 64 + message.utf8.count)
        out.writeErrorResponse(severity: "FATAL", code: code, message: message)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        context.close(promise: nil)
    }

    func close(reason: String) {
        guard state != .closed else { return }
        disconnected(reason: reason)
        context?.close(promise: nil)
    }

    /// Releases everything the client held; the server goes back clean or is closed.
    func disconnected(reason: String) {
        let previous = state
        guard previous != .closed else { return }
        state = .closed
        runtime.registries[loopIndex].remove(self)
        if console != nil {
            console = nil
            runtime.consoleSessionEnded()
        }
        endLoginState()
        if registeredWithSweeper { runtime.sweepers[loopIndex].remove(self) }
        if counted { runtime.clientLeft(); counted = false }
        if countedPerDatabaseAndUser {
            runtime.clientLimits.left(database: databaseName, user: user)
            countedPerDatabaseAndUser = false
        }
        if let key = cancelKey { runtime.cancelRegistry.unregister(processID: key.processID, secretKey: key.secretKey) }
        if runtime.snapshot.config.logDisconnections && previous != .startup {
            logger.info("closing because: \(reason) (age=\((NIODeadline.now() - connectedAt).nanoseconds / 1_000_000_000)s)")
        }
        switch previous {
        case .pooled, .waitingForWelcome:
            // The machine decides what becomes of the server: back clean (DISCARD ALL if it held session
            // state), or closed when it owes replies; a queued client leaves the queue.
            run(link.clientClosed())
        case .startup, .authenticating, .console, .closed:
            break
        }
        if let pool {
            pool.withState { $0.clientLeft() }
            if pool.key.dedicatedTo != nil { runtime.dropDedicatedPool(pool) }
        }
    }

    /// This client's logger: PgBouncer's `C-<id>: db/user@addr` prefix and the structured keys. Built when a line
    /// is logged, not kept: its metadata strings cost every idle client about 400 bytes otherwise.
    var logger: Logger {
        var logger = runtime.logger
        let db = databaseName.isEmpty ? "(nodb)" : databaseName
        let name = user.isEmpty ? "(nouser)" : user
        logger[metadataKey: "prefix"] = "C-\(id): \(db)/\(name)@\(peerDescription)"
        logger[metadataKey: "client"] = "\(id)"
        logger[metadataKey: "addr"] = "\(peerDescription)"
        logger[metadataKey: "pool"] = "\(db)/\(name)"
        return logger
    }
}

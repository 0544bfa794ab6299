import AdminConsole
import Configuration
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The running pooler: loads the config, binds the listeners, starts the janitor, and carries out reload,
/// pause, suspend and the shutdown modes, whether a signal or the admin console asked for them.
public final class ShoalServer: @unchecked Sendable {
    public let runtime: ShoalRuntime
    private let channels = NIOLockedValueBox<[Channel]>([])
    /// `shutdown` has begun: a second call returns at once (the loops it would visit are gone).
    private let shutDown = NIOLockedValueBox(false)
    private let janitor: Janitor
    private let statsReporter: StatsReporter
    private var metricsServer: MetricsServer?
    private let logSink: LogSink?

    /// `threads` defaults to worker_threads (0: the CPUs available, cgroup limits honoured).
    public init(config: ShoalConfig, userList: UserList, threads: Int? = nil, logger: Logger, logSink: LogSink? = nil) {
        let threads = threads ?? config.eventLoopCount(cpusAvailable: System.coreCount)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.runtime = ShoalRuntime(config: config, userList: userList, group: group, logger: logger)
        self.janitor = Janitor(runtime: runtime)
        self.statsReporter = StatsReporter(runtime: runtime)
        self.logSink = logSink
        runtime.controller = self
    }

    public func start() async throws {
        let contexts = try TLSContexts.build(runtime.config)
        runtime.tls.withLockedValue { $0 = contexts }
        channels.withLockedValue { $0 = [] }
        // Routed databases: checks start before clients arrive, so the first writer is usually known by then.
        runtime.hosts.configure(runtime.config)
        runtime.hosts.start()
        runtime.peers.start()
        let bound = try await Listener.bind(runtime: runtime)
        channels.withLockedValue { $0 = bound }
        janitor.start()
        statsReporter.start()
        for sweeper in runtime.sweepers { sweeper.start() }
        let config = runtime.config
        if config.metricsPort > 0 {
            let metrics = MetricsServer(runtime: runtime)
            try await metrics.start(host: config.metricsAddr, port: config.metricsPort)
            metricsServer = metrics
        }
        runtime.ready = true
    }

    /// The TCP ports actually bound (useful when the config asked for port 0 in tests).
    public var boundPorts: [Int] {
        channels.withLockedValue { $0 }.compactMap { channel in
            if case .unixDomainSocket = channel.localAddress { return nil }
            return channel.localAddress?.port
        }
    }

    /// The problems building this config's TLS contexts would meet (missing or unreadable certificate files).
    public static func checkTLS(_ config: ShoalConfig) -> [String] {
        do {
            _ = try TLSContexts.build(config)
            return []
        } catch {
            return ["\(error)"]
        }
    }

    /// Loads the auth file named by the config, logging a broken line with its place.
    public static func loadUserList(config: ShoalConfig, logger: Logger) -> UserList {
        guard let path = config.authFile else { return UserList() }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            logger.warning("could not open auth_file \(path)")
            return UserList()
        }
        let result = UserList.parse(text, file: path)
        if let problem = result.problem { logger.error("\(problem)") }
        return result.userList
    }

    /// SIGHUP / RELOAD: read the config again; on failure keep the running one and say why.
    @discardableResult
    public func reload() -> Bool {
        let path = runtime.config.configFile
        do {
            let result = try ConfigLoader().load(path: path)
            for warning in result.warnings { runtime.logger.warning("\(warning)") }
            let old = runtime.config
            if old.listenAddr != result.config.listenAddr || old.listenPort != result.config.listenPort || old.unixSocketDir != result.config.unixSocketDir
                || old.soReuseport != result.config.soReuseport {
                runtime.logger.warning("listen_addr, listen_port, unix_socket_dir and so_reuseport need a restart to change; keeping the current listeners")
            }
            if old.workerThreads != result.config.workerThreads {
                runtime.logger.warning("worker_threads needs a restart to change; keeping \(runtime.loops.count) event loops")
            }
            if old.metricsAddr != result.config.metricsAddr || old.metricsPort != result.config.metricsPort {
                runtime.logger.warning("metrics_addr and metrics_port need a restart to change; keeping the current endpoint")
            }
            // Certificates are re-read on every reload; connected clients keep the session they negotiated.
            runtime.reloadTLS(result.config)
            runtime.apply(config: result.config, userList: Self.loadUserList(config: result.config, logger: runtime.logger))
            logSink?.reopen(logfile: result.config.logfile, json: result.config.logFormat == "json")
            return true
        } catch {
            runtime.logger.warning("config file loading failed")
            runtime.logger.error("\(error)")
            return false
        }
    }

    // MARK: Pause, suspend

    /// SIGUSR1: global PAUSE (ignored when already paused or suspended).
    public func pauseAll() {
        let already = runtime.lifecycle.withLockedValue { state -> Bool in
            if state.pausedAll || state.suspended { return true }
            state.pausedAll = true
            return false
        }
        if !already { _ = runtime.pause(database: nil) }
    }

    /// SIGUSR2: RESUME after PAUSE or SUSPEND; ignored while shutting down or when not paused. Returns the
    /// log line PgBouncer writes for it.
    @discardableResult public func resumeAll() -> String {
        let outcome = runtime.lifecycle.withLockedValue { state -> String in
            if state.shutdown != nil { return "got SIGUSR2 while shutting down, ignoring" }
            guard state.pausedAll || state.suspended else { return "got SIGUSR2, but not paused/suspended, ignoring" }
            let line = state.suspended ? "got SIGUSR2, continuing from SUSPEND" : "got SIGUSR2, continuing from PAUSE"
            state.pausedAll = false
            state.suspended = false
            return line
        }
        if outcome.contains("continuing") {
            setAccepting(true)
            runtime.resume(database: nil)
        }
        return outcome
    }

    /// SUSPEND and its RESUME: stop or restart taking new connections on every listener.
    func setAccepting(_ accepting: Bool) {
        for channel in channels.withLockedValue({ $0 }) {
            channel.setOption(.autoRead, value: accepting).whenFailure { _ in }
        }
    }

    // MARK: Shutdown

    /// SHUTDOWN, SHUTDOWN WAIT_FOR_SERVERS / WAIT_FOR_CLIENTS, and SIGTERM / SIGINT. A second request while one
    /// is under way exits at once, as PgBouncer does.
    public func requestShutdown(_ mode: AdminCommand.ShutdownMode) {
        carryOutShutdown(mode, alreadyShuttingDown: beginShutdown(mode))
    }

    /// Records the shutdown: from now on logins and RESUME are refused. Returns whether one was already under way.
    func beginShutdown(_ mode: AdminCommand.ShutdownMode) -> Bool {
        runtime.lifecycle.withLockedValue { state -> Bool in
            defer { if state.shutdown == nil { state.shutdown = mode } }
            return state.shutdown != nil
        }
    }

    /// Stops listening and waits as `mode` says, or exits at once.
    func carryOutShutdown(_ mode: AdminCommand.ShutdownMode, alreadyShuttingDown: Bool) {
        if mode == .immediate || alreadyShuttingDown {
            runtime.onExit("")
            return
        }
        // Stop taking new TCP clients; the Unix socket stays open for the console (and for PgBouncer parity).
        closeListeners(tcpOnly: true)
        switch mode {
        case .waitForServers:
            // Clients that would queue, and those already queued, would wait for ever: tell them now.
            for pool in runtime.allPools {
                let (idle, refused) = pool.withState { $0.shutDown(message: "server shutting down") }
                for server in idle { server.close(reason: "shutting down") }
                for waiter in refused { waiter.eventLoop.execute { waiter.fatal("server shutting down") } }
            }
            _ = runtime.pause(database: nil)
            exitWhen("server connections dropped, exiting") { $0.servers == 0 }
        case .waitForClients:
            exitWhen("client connections dropped, exiting") { $0.clients == 0 }
        case .immediate:
            break
        }
    }

    private func exitWhen(_ line: String, _ done: @escaping ((clients: Int, servers: Int)) -> Bool) {
        let runtime = self.runtime
        runtime.poll(every: .milliseconds(200)) { runtime.connectionCounts().map(done) }.whenSuccess {
            runtime.logger.info("\(line)")
            runtime.onExit(line)
        }
    }

    private func closeListeners(tcpOnly: Bool) {
        let closing = channels.withLockedValue { channels -> [Channel] in
            let (unix, tcp) = channels.reduce(into: ([Channel](), [Channel]())) { split, channel in
                if case .unixDomainSocket = channel.localAddress { split.0.append(channel) } else { split.1.append(channel) }
            }
            channels = tcpOnly ? unix : []
            return tcpOnly ? tcp : unix + tcp
        }
        for channel in closing { channel.close(promise: nil) }
        guard !tcpOnly else { return }
        // The socket files go too, unless another Shoal has bound the path since (a restart with so_reuseport).
        for socket in runtime.unixSockets.withLockedValue({ sockets in defer { sockets = [] }; return sockets }) {
            socket.removeOwnedFile()
        }
    }

    /// Stops everything (tests, and the process's last step).
    public func shutdown() async {
        guard shutDown.withLockedValue({ done in defer { done = true }; return !done }) else { return }
        runtime.ready = false
        janitor.stop()
        runtime.hosts.stop()
        runtime.authLookups.stop()
        runtime.peers.stop()
        statsReporter.stop()
        for sweeper in runtime.sweepers { sweeper.stop() }
        closeListeners(tcpOnly: false)
        if let metricsServer { await metricsServer.stop() }
        // Close every connection while the loops still run: a closing connection tells its pool and its peer on
        // other loops, and those hops must not land on loops already shut down.
        _ = try? await runtime.visitLoops { registry, _ in
            for client in registry.clients.values { client.close(reason: "shutting down") }
            for server in registry.servers.values { server.close(reason: "shutting down") }
        }.get()
        try? await Task.sleep(nanoseconds: 100_000_000)
        try? await runtime.group.shutdownGracefully()
    }
}

/// What the console asks of the server object that owns the listeners.
protocol ServerController: AnyObject, Sendable {
    func reload() -> Bool
    func requestShutdown(_ mode: AdminCommand.ShutdownMode)
    func beginShutdown(_ mode: AdminCommand.ShutdownMode) -> Bool
    func carryOutShutdown(_ mode: AdminCommand.ShutdownMode, alreadyShuttingDown: Bool)
    func pauseAll()
    @discardableResult func resumeAll() -> String
    func setAccepting(_ accepting: Bool)
}

extension ShoalServer: ServerController {}

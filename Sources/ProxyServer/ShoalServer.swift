import Configuration
import Foundation
import Logging
import NIOCore
import NIOPosix

/// The running pooler: loads the config, binds the listeners, starts the janitor, and handles
/// reload and shutdown. Signals are turned into calls on this object by the executable.
public final class ShoalServer: @unchecked Sendable {
    public let runtime: ShoalRuntime
    private var channels: [Channel] = []
    private let janitor: Janitor
    private let logSink: LogSink?

    public init(config: ShoalConfig, userList: UserList, threads: Int = System.coreCount, logger: Logger, logSink: LogSink? = nil) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.runtime = ShoalRuntime(config: config, userList: userList, group: group, logger: logger)
        self.janitor = Janitor(runtime: runtime)
        self.logSink = logSink
    }

    public func start() async throws {
        channels = try await Listener.bind(runtime: runtime)
        janitor.start()
        for sweeper in runtime.sweepers { sweeper.start() }
    }

    /// The TCP port actually bound (useful when the config asked for port 0 in tests).
    public var boundPorts: [Int] { channels.compactMap { $0.localAddress?.port } }

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
    public func reload() {
        let path = runtime.config.configFile
        do {
            let result = try ConfigLoader().load(path: path)
            for warning in result.warnings { runtime.logger.warning("\(warning)") }
            let old = runtime.config
            if old.listenAddr != result.config.listenAddr || old.listenPort != result.config.listenPort || old.unixSocketDir != result.config.unixSocketDir {
                runtime.logger.warning("listen_addr, listen_port and unix_socket_dir need a restart to change; keeping the current listeners")
            }
            runtime.apply(config: result.config, userList: Self.loadUserList(config: result.config, logger: runtime.logger))
            logSink?.reopen(logfile: result.config.logfile)
        } catch {
            runtime.logger.warning("config file loading failed: \(error)")
        }
    }

    /// Stops accepting and waits until every client has gone, or until `timeout` passes.
    public func drain(timeout: TimeAmount) async {
        for channel in channels { try? await channel.close() }
        channels = []
        let deadline = NIODeadline.now() + timeout
        while runtime.clientCount > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
    }

    public func shutdown() async {
        janitor.stop()
        for sweeper in runtime.sweepers { sweeper.stop() }
        for channel in channels { try? await channel.close() }
        channels = []
        try? await runtime.group.shutdownGracefully()
    }
}

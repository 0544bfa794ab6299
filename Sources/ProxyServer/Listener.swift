import Configuration
import Foundation
import Logging
import NIOCore
import NIOPosix

/// Binds the TCP and Unix-socket listeners and starts one `ClientConnection` per accepted socket.
/// Accepted channels are spread over the EventLoops by NIO; each client stays on its loop for life.
///
/// With `so_reuseport = 1` (PgBouncer's key: several processes may listen on the same port) every EventLoop
/// gets a TCP listener of its own on that port, so the kernel spreads the connections over the loops and each
/// accepts its own — no accept funnelled through one loop and handed to another.
public enum Listener {
    public static func bind(runtime: ShoalRuntime) async throws -> [Channel] {
        let config = runtime.config
        // A function, not one value: ServerBootstrap is a class and its options accumulate.
        @Sendable func makeBootstrap(ipv6: Bool = false, readOnly: Bool = false, loop: EventLoop? = nil) -> ServerBootstrap {
            var bootstrap = loop.map { ServerBootstrap(group: $0, childGroup: $0) } ?? ServerBootstrap(group: runtime.group)
            if loop != nil {
                bootstrap = bootstrap.serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            }
            bootstrap = bootstrap
                // Out of file descriptors (EMFILE/ENFILE), accept() fails at once on every wakeup: back off a
                // second instead of spinning a core, as PgBouncer suspends accepting.
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler()) }
                }
                .serverChannelOption(.backlog, value: Int32(config.listenBacklog))
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.autoRead, value: true)
                // One read per readiness event, as PgBouncer does: NIO's default of 4 costs an extra read()
                // that returns EAGAIN on every request of a request/response protocol.
                .childChannelOption(.maxMessagesPerRead, value: 1)
                // Small first reads: most client messages are a few hundred bytes, and a channel keeps its last
                // receive buffer for reuse, so the initial size is paid by every idle client. It grows on demand.
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536))
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if case .unixDomainSocket = channel.localAddress {} else {
                            try? TCPTuning.apply(to: channel, config: config)
                        }
                        try channel.pipeline.syncOperations.addHandler(ClientConnection(runtime: runtime, eventLoop: channel.eventLoop, readOnlyRoute: readOnly))
                    }
                }
            // An IPv6 wildcard would otherwise take the IPv4 port too, and `*` could not bind both.
            return ipv6 ? bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1) : bootstrap
        }
        var channels: [Channel] = []
        var tcpListeners = 0
        // The main port, and readonly_listen_port whose clients are served by replicas under the same names.
        var ports = [(config.listenPort, false)]
        if config.readonlyListenPort > 0 { ports.append((config.readonlyListenPort, true)) }
        for (port, readOnly) in ports {
            let what = readOnly ? " (read-only route)" : ""
            for address in config.listenAddr {
                let hosts = address == "*" ? ["0.0.0.0", "::"] : [address]
                for host in hosts {
                    let shown = host.contains(":") ? "[\(host)]" : host
                    do {
                        // One listener, or one per loop sharing the port (so_reuseport).
                        let loops: [EventLoop?] = config.soReuseport ? runtime.loops : [nil]
                        for loop in loops {
                            let bootstrap = makeBootstrap(ipv6: host.contains(":"), readOnly: readOnly, loop: loop)
                            channels.append(try await bootstrap.bind(host: host, port: port).get())
                            tcpListeners += 1
                        }
                        runtime.logger.info("listening on \(shown):\(port)\(what)\(config.soReuseport ? " (so_reuseport, \(loops.count) listeners)" : "")")
                    } catch {
                        runtime.logger.warning("cannot listen on \(shown):\(port): \(error)")
                    }
                }
            }
            if !readOnly && !config.listenAddr.isEmpty && tcpListeners == 0 {
                // PgBouncer (since 1.19.1) fails hard here: some addresses failing is tolerable, none working is
                // a configuration error, and the Unix socket alone would hide it.
                for channel in channels { channel.close(promise: nil) }
                throw ListenerError.noListenAddress(config.listenAddr.joined(separator: ","))
            }
            if !config.unixSocketDir.isEmpty {
                let path = "\(config.unixSocketDir)/.s.PGSQL.\(port)"
                try? FileManager.default.removeItem(atPath: path)
                do {
                    let channel = try await makeBootstrap(readOnly: readOnly).bind(unixDomainSocketPath: path).get()
                    chmod(path, mode_t(config.unixSocketMode))
                    if !config.unixSocketGroup.isEmpty {
                        // PgBouncer's unix_socket_group: the socket's group, for a mode like 0770.
                        if let group = getgrnam(config.unixSocketGroup) {
                            if chown(path, uid_t.max, group.pointee.gr_gid) != 0 {
                                runtime.logger.warning("unix_socket_group: cannot give unix:\(path) to group \(config.unixSocketGroup): errno \(errno)")
                            }
                        } else {
                            runtime.logger.warning("unix_socket_group: no group named \(config.unixSocketGroup); unix:\(path) keeps its group")
                        }
                    }
                    runtime.logger.info("listening on unix:\(path)\(what)")
                    channels.append(channel)
                } catch {
                    runtime.logger.warning("cannot listen on unix:\(path): \(error)")
                }
            }
        }
        if channels.isEmpty {
            throw ListenerError.nowhereToListen
        }
        return channels
    }
}

public enum ListenerError: Error, CustomStringConvertible {
    case nowhereToListen
    case noListenAddress(String)
    /// PgBouncer's wording for both.
    public var description: String {
        switch self {
        case .nowhereToListen: return "nowhere to listen on"
        case .noListenAddress(let list): return "failed to listen on any address in listen_addr list: \(list)"
        }
    }
}

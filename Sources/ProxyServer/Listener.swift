import Configuration
import Foundation
import Glibc
import Logging
import NIOCore
import NIOPosix

/// Binds the TCP and Unix-socket listeners and starts one `ClientConnection` per accepted socket; each client
/// stays on the loop that accepted it for life.
///
/// Every EventLoop gets a TCP listener of its own on each address and port (SO_REUSEPORT), so the kernel spreads
/// the connections over the loops and each accepts its own: an accept funnelled through one loop hands every
/// other channel to another loop (a wake-up of that loop per connection), which cost about 15 % of Shoal's CPU
/// per connect-per-request transaction on two loops (Benchmarks/RESULTS.md). `so_reuseport` keeps PgBouncer's
/// meaning — whether other processes may listen on the same port: without it a probe bound without
/// SO_REUSEPORT first fails if anything listens there, so a second instance refuses to start as before.
public enum Listener {
    public static func bind(runtime: ShoalRuntime) async throws -> [Channel] {
        let config = runtime.config
        // 256 bytes hold a login's messages (a startup packet, SCRAM's client-first and client-final): that is
        // what an idle client that has only logged in keeps.
        let clientReceiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: config.pktBuf)
        // A function, not one value: ServerBootstrap is a class and its options accumulate.
        @Sendable func makeBootstrap(ipv6: Bool = false, readOnly: Bool = false, loop: EventLoop? = nil, tcp: Bool = true) -> ServerBootstrap {
            var bootstrap = loop.map { ServerBootstrap(group: $0, childGroup: $0) } ?? ServerBootstrap(group: runtime.group)
            if loop != nil {
                bootstrap = bootstrap.serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            }
            bootstrap = bootstrap
                // Out of file descriptors (EMFILE/ENFILE), accept() fails at once on every wakeup: back off a
                // second instead of spinning a core, as PgBouncer suspends accepting.
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Keepalive, TCP_USER_TIMEOUT and buffer sizes set on the listener are inherited by every
                        // socket it accepts (Linux copies them at accept): no setsockopt per client.
                        if tcp { try TCPTuning.apply(to: channel, config: config, listener: true) }
                        try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler())
                    }
                }
                .serverChannelOption(.backlog, value: Int32(config.listenBacklog))
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                // NIO's default too, made explicit: accepted sockets inherit it.
                .serverChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                // The child options are set here, synchronously, rather than as childChannelOptions: NIO applies
                // those one by one through a chain of futures per accepted socket (3.8 % of Shoal's samples in a
                // profile of pgbench -S -C).
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let options = channel.syncOptions {
                            // One read per readiness event, as PgBouncer does: NIO's default of 4 costs an extra
                            // read() that returns EAGAIN on every request of a request/response protocol.
                            try options.setOption(.maxMessagesPerRead, value: 1)
                            // Small first reads: most client messages are a few hundred bytes, and a channel keeps
                            // its last receive buffer for reuse, so the initial size is paid by every idle client.
                            // It doubles after each read that fills it, up to pkt_buf (PgBouncer's 4 KB), and never
                            // shrinks: with NIO's 64 KB bound, a client that once sent a 32 KB statement kept a
                            // buffer that size while idle (22.5 KB per idle client against 9.4 KB; RESULTS.md).
                            try options.setOption(.recvAllocator, value: clientReceiveBuffers)
                        }
                        try channel.pipeline.syncOperations.addHandler(ClientConnection(runtime: runtime, eventLoop: channel.eventLoop, readOnlyRoute: readOnly))
                    }
                }
            if tcp && config.tcpDeferAccept {
                // tcp_defer_accept: PgBouncer's 45 s. A PostgreSQL client speaks first, so its accept and its
                // startup packet come in one wakeup instead of two.
                bootstrap = bootstrap.serverChannelOption(
                    ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_DEFER_ACCEPT)), value: 45)
            }
            // An IPv6 wildcard would otherwise take the IPv4 port too, and `*` could not bind both.
            return ipv6 ? bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1) : bootstrap
        }
        if config.soReuseport, let migrate = try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_migrate_req", encoding: .utf8),
           migrate.trimmingCharacters(in: .whitespacesAndNewlines) == "0" {
            // Without it, connections the kernel has queued on this process's listeners when they close (the
            // instant of a rolling restart's SIGTERM) are reset instead of moving to the other process's.
            let advice = "so_reuseport: net.ipv4.tcp_migrate_req is 0, so connections queued on this process's listeners "
                + "when it stops are reset; set it to 1 (sysctl) for restarts that refuse nobody"
            runtime.logger.warning("\(advice)")
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
                        // One listener per loop sharing the port; a single one when there is a single loop.
                        let loops: [EventLoop?] = config.soReuseport || runtime.loops.count > 1 ? runtime.loops : [nil]
                        if !config.soReuseport && loops.count > 1 && port != 0 {
                            try probePortIsFree(host: host, port: port)
                        }
                        var boundPort = port
                        for loop in loops {
                            let bootstrap = makeBootstrap(ipv6: host.contains(":"), readOnly: readOnly, loop: loop)
                            let channel = try await bootstrap.bind(host: host, port: boundPort).get()
                            // listen_port = 0: the kernel's choice for the first listener is every other one's too.
                            if boundPort == 0 { boundPort = channel.localAddress?.port ?? 0 }
                            channels.append(channel)
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
                do {
                    let socket = try UnixListenSocket.make(path: path, mode: config.unixSocketMode, backlog: config.listenBacklog)
                    let channel: Channel
                    do {
                        channel = try await makeBootstrap(readOnly: readOnly, tcp: false).withBoundSocket(socket.descriptor).get()
                    } catch {
                        close(socket.descriptor)
                        socket.removeOwnedFile()
                        throw error
                    }
                    runtime.unixSockets.withLockedValue { $0.append(socket) }
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

/// Fails with EADDRINUSE if any socket listens on `host:port`: a socket bound there without SO_REUSEPORT
/// conflicts with every listener, and is closed at once. With SO_REUSEADDR, connections an earlier listener on
/// the port accepted and left in TIME_WAIT do not count (a restart is not refused).
private func probePortIsFree(host: String, port: Int) throws {
    let address = try SocketAddress(ipAddress: host, port: port)
    let ipv6 = address.protocol == .inet6
    let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw PortProbeFailure(code: errno) }
    defer { close(fd) }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    if ipv6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size)) }
    let result = address.withSockAddr { Glibc.bind(fd, $0, socklen_t($1)) }
    if result != 0 { throw PortProbeFailure(code: errno) }
}

/// The probe's bind failed: logged as `cannot listen on host:port: bind: Address already in use (errno: 98)`.
private struct PortProbeFailure: Error, CustomStringConvertible {
    let code: Int32
    var description: String { "bind: \(String(cString: strerror(code))) (errno: \(code))" }
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

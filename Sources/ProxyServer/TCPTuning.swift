import Configuration
import Glibc
import NIOCore

/// Socket options for every TCP connection, to clients and to servers: no Nagle delay, PgBouncer's
/// tcp_socket_buffer, and its keepalive keys (0 leaves the kernel's default), so a peer that vanished without a
/// reset is noticed.
enum TCPTuning {
    /// `listener`: a TCP listening socket, whose accepted sockets inherit all of these (Linux copies them at
    /// accept), so clients cost no setsockopt; TCP_NODELAY is left to NIO's ServerBootstrap, which sets it there.
    static func apply(to channel: Channel, config: ShoalConfig, listener: Bool = false) throws {
        guard let options = channel.syncOptions else { return }
        if !listener { try options.setOption(.tcpOption(.tcp_nodelay), value: 1) }
        // tcp_socket_buffer: both buffers fixed (the kernel doubles the figure for its bookkeeping).
        if config.tcpSocketBuffer > 0 {
            let bytes = min(config.tcpSocketBuffer, Int(Int32.max / 2))
            try options.setOption(.socketOption(.so_sndbuf), value: bytes)
            try options.setOption(.socketOption(.so_rcvbuf), value: bytes)
        }
        // TCP_USER_TIMEOUT (milliseconds): how long sent data may stay unacknowledged before the kernel drops
        // the connection — what notices a dead peer while a query is on the wire.
        if config.tcpUserTimeout > 0 {
            try options.setOption(tcp(TCP_USER_TIMEOUT), value: min(config.tcpUserTimeout, Int(Int32.max)))
        }
        guard config.tcpKeepalive else { return }
        try options.setOption(.socketOption(.so_keepalive), value: 1)
        if config.tcpKeepidle > 0 { try options.setOption(tcp(TCP_KEEPIDLE), value: min(config.tcpKeepidle, Int(Int32.max))) }
        if config.tcpKeepintvl > 0 { try options.setOption(tcp(TCP_KEEPINTVL), value: min(config.tcpKeepintvl, Int(Int32.max))) }
        if config.tcpKeepcnt > 0 { try options.setOption(tcp(TCP_KEEPCNT), value: min(config.tcpKeepcnt, Int(Int32.max))) }
    }

    private static func tcp(_ name: Int32) -> ChannelOptions.Types.SocketOption {
        ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: name))
    }
}

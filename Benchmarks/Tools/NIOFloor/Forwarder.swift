import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

// The CPU floor under SwiftNIO: a byte forwarder that gives every accepted connection its own connection to
// PostgreSQL and copies bytes both ways, nothing else. It is built the way Shoal uses NIO (a listener per loop with
// SO_REUSEPORT, the client options Shoal sets synchronously at accept, one read per wakeup, a flush per read burst,
// TCP_DEFER_ACCEPT), so e2e.sh can put what NIO alone costs per transaction next to Shoal and PgBouncer in one run
// (NIO_FORWARDER=1). Under pgbench -S it does exactly the socket work a pooler does per transaction; under -S -C it
// also dials PostgreSQL per client, which a pooler does not, so there it over-states NIO's share.

/// One side of the pair: what it reads is written to its partner, flushed when the read burst ends. With `cross`,
/// the partner lives on another loop and every read is handed to it as a task (as Shoal does for a client linked to
/// a server of another loop), to measure what a hop costs. Unchecked Sendable: tasks carry a side to its own loop,
/// and `loop` and `partner` are set before the client is registered, so nothing is read across threads unordered.
final class Glue: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var partner: Glue?
    /// This side's loop, set only in the cross-loop mode (unset, the partner is written to directly).
    var loop: EventLoop?
    private var context: ChannelHandlerContext?
    private var pendingFlush = false

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let partner else { return }
        if let partnerLoop = partner.loop, partnerLoop !== context.eventLoop {
            let bytes = unwrapInboundIn(data)
            partnerLoop.execute { partner.context?.writeAndFlush(NIOAny(bytes), promise: nil) }
            return
        }
        partner.context?.write(data, promise: nil)
        partner.pendingFlush = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard let partner, partner.pendingFlush else { return }
        partner.pendingFlush = false
        partner.context?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        guard let partner else { return }
        self.partner = nil
        if let partnerLoop = partner.loop, partnerLoop !== context.eventLoop {
            partnerLoop.execute { partner.context?.close(promise: nil) }
        } else {
            partner.context?.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

enum Forwarder {
    static func run(port: Int, upstreamPort: Int, loops: Int, cross: Bool) throws -> Never {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: loops)
        let all = Array(group.makeIterator())
        var listeners: [Channel] = []
        for (index, loop) in all.enumerated() {
            let serverLoop = cross ? all[(index + 1) % all.count] : loop
            listeners.append(try bootstrap(on: loop, serverLoop: serverLoop, upstreamPort: upstreamPort).bind(host: "127.0.0.1", port: port).wait())
        }
        try listeners[0].closeFuture.wait()
        exit(0)
    }

    static func bootstrap(on loop: EventLoop, serverLoop: EventLoop, upstreamPort: Int) -> ServerBootstrap {
        ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .serverChannelOption(
                ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_DEFER_ACCEPT)), value: 45)
            .childChannelInitializer { client in
                let clientSide = Glue()
                do {
                    if let options = client.syncOptions {
                        try options.setOption(.maxMessagesPerRead, value: 1)
                        try options.setOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 4096))
                    }
                    try client.pipeline.syncOperations.addHandler(clientSide)
                } catch {
                    return client.eventLoop.makeFailedFuture(error)
                }
                // The client is registered (and read) only once its server is connected: nothing to buffer meanwhile.
                let serverSide = Glue()
                if serverLoop !== client.eventLoop {
                    clientSide.loop = client.eventLoop
                    serverSide.loop = serverLoop
                }
                serverSide.partner = clientSide
                return ClientBootstrap(group: serverLoop)
                    .channelOption(.maxMessagesPerRead, value: 1)
                    .channelInitializer { server in
                        server.eventLoop.makeCompletedFuture { try server.pipeline.syncOperations.addHandler(serverSide) }
                    }
                    .connect(host: "127.0.0.1", port: upstreamPort)
                    // Back on the client's loop, before it is registered and can read.
                    .hop(to: client.eventLoop)
                    .map { _ in clientSide.partner = serverSide }
            }
    }
}

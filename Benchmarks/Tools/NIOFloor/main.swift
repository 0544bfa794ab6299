import NIOCore
import NIOPosix

// What SwiftNIO alone costs, to tell NIO's share of Shoal's figures from Shoal's own.
//   NIOFloor PORT                       memory: a listener with Shoal's child-channel options whose handler keeps
//                                       nothing; nio-floor.sh holds 10,000 connections open against it and reads
//                                       the RSS growth.
//   NIOFloor PORT UPSTREAM_PORT [LOOPS [cross]]
//                                       CPU: a byte forwarder to PostgreSQL on UPSTREAM_PORT (Forwarder.swift),
//                                       which e2e.sh runs beside the poolers with NIO_FORWARDER=1. LOOPS defaults to
//                                       the cores available, as Shoal's worker_threads does; `cross` dials each
//                                       client's server on the next loop, so every message hops between threads.
final class KeepsNothing: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

let arguments = CommandLine.arguments
if arguments.count >= 3 {
    try Forwarder.run(port: Int(arguments[1])!, upstreamPort: Int(arguments[2])!,
                      loops: arguments.count >= 4 ? Int(arguments[3])! : System.coreCount,
                      cross: arguments.count >= 5 && arguments[4] == "cross")
}
let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
let channel = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.maxMessagesPerRead, value: 1)
    .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 4096))
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(KeepsNothing()) }
    }
    .bind(host: "127.0.0.1", port: Int(arguments[1])!).wait()
try channel.closeFuture.wait()

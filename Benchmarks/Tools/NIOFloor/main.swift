import NIOCore
import NIOPosix

// The memory floor of an idle connection under SwiftNIO: a listener with Shoal's child-channel options whose
// handler keeps nothing. `nio-floor.sh` holds 10,000 connections open against it and reads the RSS growth, to
// tell NIO's own per-channel cost from Shoal's. Usage: NIOFloor PORT
final class KeepsNothing: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
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
    .bind(host: "127.0.0.1", port: Int(CommandLine.arguments[1])!).wait()
try channel.closeFuture.wait()

import Configuration
import NIOCore
import NIOPosix
import PostgresWire

/// Opens a short connection to the server and sends it a CancelRequest with the server's own key — to the
/// host that server connection is on (a database may name several).
enum CancelForwarder {
    /// `finished` runs on `eventLoop` once the server closed the cancel connection (it has signalled the
    /// backend by then) or the attempt failed.
    static func send(processID: Int32, secretKey: Int32, to address: HostAddress, runtime: ShoalRuntime, on eventLoop: EventLoop,
                     finished: @escaping () -> Void = {}) {
        let config = runtime.config
        let host = address.host
        let port = address.port
        let bootstrap = ClientBootstrap(group: eventLoop).connectTimeout(.seconds(5))
        let connected = host.hasPrefix("/")
            ? bootstrap.connect(unixDomainSocketPath: "\(host)/.s.PGSQL.\(port)")
            : bootstrap.connect(host: host, port: port)
        connected.whenSuccess { channel in
            channel.closeFuture.whenComplete { _ in finished() }
            var request = channel.allocator.buffer(capacity: 16)
            request.writeCancelRequest(processID: processID, secretKey: secretKey)
            // The server closes the connection after reading the request.
            channel.writeAndFlush(request).whenComplete { _ in
                channel.eventLoop.scheduleTask(in: .seconds(Int64(max(1, config.cancelWaitTimeout)))) { channel.close(promise: nil) }
            }
        }
        connected.whenFailure { error in
            runtime.logger.warning("cancel request to \(host):\(port) failed: \(error)")
            finished()
        }
    }
}

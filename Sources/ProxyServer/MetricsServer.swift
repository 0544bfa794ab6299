import AdminConsole
import NIOCore
import NIOHTTP1
import NIOPosix
import Pooling

/// The HTTP endpoint on metrics_addr:metrics_port: `/metrics` (Prometheus text), `/healthz` (the process
/// answers) and `/readyz` (listening, config loaded, not shutting down) for Kubernetes probes.
final class MetricsServer: @unchecked Sendable {
    private let runtime: ShoalRuntime
    private var channel: Channel?

    init(runtime: ShoalRuntime) { self.runtime = runtime }

    var port: Int? { channel?.localAddress?.port }

    func start(host: String, port: Int) async throws {
        let runtime = self.runtime
        let bootstrap = ServerBootstrap(group: runtime.loops[0])
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHTTPHandler(runtime: runtime))
                }
            }
        let address = host == "*" || host.isEmpty ? "::" : host
        do {
            channel = try await bootstrap.bind(host: address, port: port).get()
        } catch where address == "::" {
            channel = try await bootstrap.bind(host: "0.0.0.0", port: port).get()
        }
        runtime.logger.info("metrics listening on \(host):\(self.port ?? port)")
    }

    func stop() async {
        try? await channel?.close()
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let runtime: ShoalRuntime
    private var path = "/"
    private var keepAlive = true

    init(runtime: ShoalRuntime) { self.runtime = runtime }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "/")
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            route(context: context)
        }
    }

    private func route(context: ChannelHandlerContext) {
        switch path {
        case "/healthz":
            respond(context: context, status: .ok, body: "ok\n")
        case "/readyz":
            let ready = runtime.ready
            respond(context: context, status: ready ? .ok : .serviceUnavailable, body: ready ? "ready\n" : "not ready\n")
        case "/metrics":
            let runtime = self.runtime
            runtime.consoleSnapshot().and(runtime.trafficTotals()).hop(to: context.eventLoop).whenComplete { result in
                switch result {
                case .success(let (snapshot, traffic)):
                    var pools = snapshot.pools
                    for index in pools.indices { pools[index].traffic = traffic[pools[index].key] ?? TrafficCounters() }
                    let state = runtime.lifecycle.withLockedValue { $0 }
                    let process = PrometheusText.Process(
                        ready: runtime.ready, paused: state.pausedAll || state.suspended, clients: runtime.clientCount,
                        maxClientConnections: runtime.config.maxClientConn, authFailures: snapshot.authFailures)
                    let known = runtime.hosts.snapshot()
                    let hosts = known.hosts.map { PrometheusText.Host(status: $0, connections: runtime.budget.connections(to: $0.address)) }
                    let body = PrometheusText.render(pools: pools, process: process, hosts: hosts, failovers: known.failovers)
                    self.respond(context: context, status: .ok, body: body,
                                 contentType: "text/plain; version=0.0.4; charset=utf-8")
                case .failure(let error):
                    self.respond(context: context, status: .internalServerError, body: "\(error)\n")
                }
            }
        default:
            respond(context: context, status: .notFound, body: "not found: try /metrics, /healthz or /readyz\n")
        }
    }

    private func respond(context: ChannelHandlerContext, status: HTTPResponseStatus, body: String,
                         contentType: String = "text/plain; charset=utf-8") {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        let keepAlive = self.keepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}

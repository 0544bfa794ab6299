import Configuration
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Pooling

/// The other Shoal processes of a fleet, for CancelRequests that land on the wrong one (behind a Kubernetes
/// Service or an NLB, psql's Ctrl-C and PHP's pg_cancel_query reach a random replica):
/// - `[peers]` with `peer_id`, as PgBouncer defines them: the key names its issuer, the request goes there;
/// - `peers_dns` (Shoal): every address of a DNS name (a headless Service), re-resolved every 10 s; a request
///   no local client owns is sent to all of them with TTL 0, so none sends it on. Sending one to this process
///   too is harmless: it is not found and dropped.
final class PeerDirectory: @unchecked Sendable {
    private let runtime: ShoalRuntime
    private let addresses = NIOLockedValueBox<[String]>([])
    private var task: RepeatedTask?

    init(runtime: ShoalRuntime) { self.runtime = runtime }

    func start() {
        let name = runtime.snapshot.config.peersDNS
        guard !name.isEmpty else { return }
        task = runtime.loops[0].scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(10)) { [weak self] _ in
            guard let directory = self else { return }
            // getaddrinfo blocks: off the EventLoop.
            DispatchQueue.global().async { directory.resolve(name) }
        }
    }

    func stop() { task?.cancel() }

    var discovered: [String] { addresses.withLockedValue { $0 } }

    private func resolve(_ name: String) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0, let first = list else {
            runtime.logger.warning("peers_dns: cannot resolve \(name)")
            return
        }
        defer { freeaddrinfo(first) }
        var found = Set<String>()
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            if getnameinfo(current.pointee.ai_addr, current.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 {
                found.insert(String(cString: host))
            }
            entry = current.pointee.ai_next
        }
        let sorted = found.sorted()
        let before = addresses.withLockedValue { old in defer { old = sorted }; return old }
        if before != sorted { runtime.logger.info("peers_dns \(name): \(sorted.joined(separator: ", "))") }
    }

    /// A CancelRequest whose key no local client owns: forwarded to the peer that issued it, or to every
    /// discovered replica; dropped when its TTL is spent or nobody fits.
    func forward(_ key: PeerCancelKey, on eventLoop: EventLoop) {
        let config = runtime.snapshot.config
        if key.peerID != 0, key.peerID != config.peerID, let peer = config.peers[key.peerID] {
            guard let next = key.forwarded() else { return }
            CancelForwarder.send(processID: next.processID, secretKey: next.secretKey,
                                 to: HostAddress(host: peer.host, port: peer.port), runtime: runtime, on: eventLoop)
            return
        }
        guard !config.peersDNS.isEmpty, key.ttl > 0 else { return }
        let copy = key.broadcast()
        for address in discovered {
            CancelForwarder.send(processID: copy.processID, secretKey: copy.secretKey,
                                 to: HostAddress(host: address, port: config.listenPort), runtime: runtime, on: eventLoop)
        }
    }
}

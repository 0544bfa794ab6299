import NIOCore

/// Per-EventLoop list of logged-in clients and the periodic look at their timeouts (query_timeout,
/// idle_transaction_timeout, client_idle_timeout). Each loop sweeps only its own clients, so no lock and no
/// thread hop; a client costs one timestamp per read when any of these timeouts is set.
final class ClientSweeper: @unchecked Sendable {
    private let eventLoop: EventLoop
    /// Touched on `eventLoop` only.
    private var clients: [ObjectIdentifier: ClientConnection] = [:]
    /// Clients logging in, with their client_login_timeout deadline. A sweep rather than a timer per connection:
    /// scheduling and cancelling a NIO task on every login showed in connect-per-request profiles, and the
    /// sweep's third of a second is finer than the timeout's whole seconds (PgBouncer's janitor checks as often).
    private var loggingIn: [ObjectIdentifier: (client: ClientConnection, deadline: NIODeadline)] = [:]
    private var task: RepeatedTask?

    init(eventLoop: EventLoop) { self.eventLoop = eventLoop }

    func add(_ client: ClientConnection) {
        eventLoop.preconditionInEventLoop()
        clients[ObjectIdentifier(client)] = client
    }

    func remove(_ client: ClientConnection) {
        eventLoop.preconditionInEventLoop()
        clients.removeValue(forKey: ObjectIdentifier(client))
    }

    func watchLogin(_ client: ClientConnection, deadline: NIODeadline) {
        eventLoop.preconditionInEventLoop()
        loggingIn[ObjectIdentifier(client)] = (client, deadline)
    }

    func loginEnded(_ client: ClientConnection) {
        eventLoop.preconditionInEventLoop()
        loggingIn.removeValue(forKey: ObjectIdentifier(client))
    }

    func start() {
        task = eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(333), delay: .milliseconds(333)) { [weak self] _ in
            guard let self else { return }
            let now = NIODeadline.now()
            for client in self.clients.values { client.checkTimeouts(now: now) }
            if !self.loggingIn.isEmpty {
                let late = self.loggingIn.values.filter { $0.deadline <= now }.map(\.client)
                for client in late {
                    self.loggingIn.removeValue(forKey: ObjectIdentifier(client))
                    client.loginTimedOut()
                }
            }
        }
    }

    func stop() { task?.cancel() }
}

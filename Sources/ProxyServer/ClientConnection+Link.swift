import NIOCore
import Pooling
import PostgresWire

/// The pooled phase as glue: each side's bytes go into the `LinkStateMachine`, and what it answers is carried
/// out here — bytes written, the pool asked, the server given back or closed. Nothing is decided here.
extension ClientConnection {
    // MARK: Client traffic

    func clientBytesReceived(_ buffer: ByteBuffer) {
        if link.phase == .idle { adoptNewConfig() }
        let now = link.options.tracksActivity ? NIODeadline.now().uptimeNanoseconds : 0
        let read: LinkStateMachine.ClientRead
        do {
            read = try link.clientBytes(buffer, now: now)
        } catch {
            switch error {
            case .badLength(_, _, let header):
                return fatal("bad packet header: '\(MD5Password.hex(header))'")
            case .tooLongToHold(_, let length, let limit):
                return fatal("prepared statement message too long: \(length) bytes, at most \(limit) are held for max_prepared_statements",
                             code: "54000")
            }
        }
        if let refusal = read.protocolRefusal {
            logger.error("client used pqexec")
            return fatal(refusal)
        }
        if let warning = read.warning { logger.warning("\(warning)") }
        if let refused = read.refused { logger.warning("refused: \(refused)") }
        if let answer = read.toClient, let context {
            context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
        }
        if let statsShard {
            statsShard.counters.bytesReceived &+= UInt64(buffer.readableBytes)
            // PgBouncer counts parses and binds only while it tracks prepared statements (max_prepared_statements).
            if (read.parses > 0 || read.binds > 0) && link.options.tracksPrepared {
                statsShard.counters.clientParses &+= UInt64(read.parses)
                statsShard.counters.serverParses &+= UInt64(read.parses + read.injectedParses)
                statsShard.counters.binds &+= UInt64(read.binds)
            }
            if queryStartedAt == 0 && link.tracker.awaitingServer {
                queryStartedAt = NIODeadline.now().uptimeNanoseconds
                if transactionStartedAt == 0 { transactionStartedAt = queryStartedAt }
            }
        }
        if let bytes = read.toServer, let server {
            server.send(bytes, flush: server.eventLoop !== eventLoop)
        }
        if read.requestServer { requestServer() }
        // A client that keeps sending while it waits for a server is not read further until it has one: what
        // it sends is held in the machine, and holding must stay bounded.
        if link.pendingBytes > Self.pendingLimit { pauseReading(.pendingFull) }
        if read.terminated { close(reason: "client close request") }
    }

    static let pendingLimit = 1 << 20

    // MARK: Reading the client

    /// Why this client is not being read: its queued bytes are at their limit, or its server cannot take more.
    struct ReadPause: OptionSet {
        let rawValue: UInt8
        static let pendingFull = ReadPause(rawValue: 1)
        static let serverBusy = ReadPause(rawValue: 2)
    }

    func pauseReading(_ reason: ReadPause) {
        let wasReading = readPauses.isEmpty
        readPauses.insert(reason)
        guard wasReading, let context else { return }
        context.channel.setOption(.autoRead, value: false).whenFailure { _ in }
    }

    func resumeReading(_ reason: ReadPause) {
        guard readPauses.contains(reason) else { return }
        readPauses.remove(reason)
        guard readPauses.isEmpty, let context else { return }
        context.channel.setOption(.autoRead, value: true).whenFailure { _ in }
    }

    /// The linked server's channel became (un)writable: what the client sends would otherwise pile up here.
    func serverWritabilityChanged(_ writable: Bool, from origin: ServerConnection) {
        guard origin === server else { return }
        if writable { resumeReading(.serverBusy) } else { pauseReading(.serverBusy) }
    }

    /// RELOAD or SET changed the config since this client's link options were built: rebuild them (once per
    /// config per pool and user, cached by the pool) and swap them in at this quiet point.
    func adoptNewConfig() {
        guard let pool, let linkSnapshot else { return }
        let snapshot = runtime.snapshot
        guard snapshot !== linkSnapshot else { return }
        let options = pool.linkOptions(user: user, snapshot: snapshot, statementNames: runtime.statementNames)
        guard link.replaceOptions(options) else { return }
        self.linkSnapshot = snapshot
        if options.value.tracksActivity && !registeredWithSweeper {
            runtime.sweepers[loopIndex].add(self)
            registeredWithSweeper = true
        }
    }

    // MARK: Getting a server

    func requestServer() {
        guard let pool else { return }
        link.waitForServer()
        let now = NIODeadline.now().uptimeNanoseconds
        switch pool.withState({ $0.leaseRequested(by: self, loop: loopIndex, now: now) }) {
        case .use(let server):
            beginLink(with: server)
        case .connectAndWait(let loop):
            waitStartedAt = now
            ServerConnection.dial(pool: pool, runtime: runtime, on: runtime.loops[loop])
        case .wait:
            waitStartedAt = now
        case .checkAndWait(let server):
            waitStartedAt = now
            server.check(query: pool.settings.serverCheckQuery)
        case .fail(let message, let code):
            fatal(message, code: code)
        }
    }

    /// query_wait_notify: the janitor found this client queued that long (once per wait); a client that was
    /// welcomed already is told so, in PgBouncer's words.
    func queuedTooLong() {
        guard state == .pooled, link.phase == .waitingForServer, let context else { return }
        var notice = context.channel.allocator.buffer(capacity: 96)
        notice.writeErrorResponse(severity: "NOTICE", code: "00000",
                                  message: "No server connection available in postgres backend, client being queued", notice: true)
        context.writeAndFlush(wrapOutboundOut(notice), promise: nil)
    }

    /// The pool hands this client a server (from any loop).
    func assign(_ server: ServerConnection) {
        if eventLoop.inEventLoop {
            beginLink(with: server)
        } else {
            eventLoop.execute { self.beginLink(with: server) }
        }
    }

    func beginLink(with server: ServerConnection) {
        if state == .waitingForWelcome {
            // The welcome was what this client waited for; a request it already sent is served by this server.
            sendWelcome(pool?.welcome)
        }
        // The server is idle in no list now (the pool handed it over under its lock): its session is lent here.
        if replication != nil && state == .pooled {
            // The dedicated server was started with this client's own parameters: what it reports is what the
            // client asked for, and nothing is replayed (a physical walsender takes no SET).
            link.parameters = server.session.parameters
        }
        let step = state == .pooled ? link.serverAssigned(server.session, keep: replication != nil) : nil
        if let step {
            if let warning = step.warning { logger.warning("\(warning)") }
            if let answer = step.toClient, let context {
                context.write(wrapOutboundOut(answer), promise: nil)
                needsFlush = true
            }
        }
        guard let step, link.phase == .linked else {
            // Not wanted any more (the client left, was served meanwhile, or only waited for the welcome).
            flushToClient()
            resumeReading(.pendingFull)
            return server.returnToPool(reusable: true)
        }
        self.server = server
        server.attach(self)
        if let statsShard {
            let waited = waitStartedAt == 0 ? 0 : (NIODeadline.now().uptimeNanoseconds &- waitStartedAt) / 1000
            waitStartedAt = 0
            statsShard.counters.recordAssignment(waitMicros: waited)
        }
        if let context, !context.channel.isWritable { server.setReadPaused(true) }
        run(step.action)
    }

    // MARK: Server traffic

    /// Bytes from the linked server. `flush` is set when they came from another loop (no read-complete follows here).
    func serverDataReceived(_ buffer: ByteBuffer, from origin: ServerConnection, flush: Bool) {
        guard state == .pooled, origin === server, let context else { return }
        let read = link.serverBytes(buffer) { origin.hostStillFits() }
        if read.readOnlyRefusal { runtime.hosts.readOnlyRefusal(at: origin.hostAddress) }
        if let statsShard {
            statsShard.counters.bytesSent &+= UInt64(buffer.readableBytes)
            if read.readyCount > 0 { countCompleted(queries: read.readyCount, transactions: read.transactionsEnded, in: statsShard) }
        }
        if let first = read.toClientFirst {
            context.write(wrapOutboundOut(first), promise: nil)
            needsFlush = true
        }
        switch read.forward {
        case .all:
            context.write(wrapOutboundOut(buffer), promise: nil)
            needsFlush = true
        case .none:
            break
        case .ranges(let ranges):
            for range in ranges {
                context.write(wrapOutboundOut(buffer.getSlice(at: buffer.readerIndex + range.lowerBound, length: range.count)!), promise: nil)
                needsFlush = true
            }
        }
        if let after = read.toClientAfter {
            context.write(wrapOutboundOut(after), promise: nil)
            needsFlush = true
        }
        if let warning = read.warning { logger.warning("\(warning)") }
        if read.becamePinned && !registeredWithSweeper {
            // pin_warn_timeout needs the clock.
            runtime.sweepers[loopIndex].add(self)
            registeredWithSweeper = true
        }
        if flush { flushToClient() }
        run(read.action)
        // `link.phase` first: a stored field is read in place, while any getter called on `link` (a struct in
        // this class) was handed a retained copy of the whole machine — 577 bytes and some twenty references
        // retained and released on every transaction, 0.85 % of Shoal's samples under pgbench -S. A transaction-
        // pooled client is idle again by now, so the rest is asked only of session and pinned clients.
        if read.transactionsEnded > 0, link.phase == .linked, link.mayEndSession, runtime.snapshot.config.serverFastClose {
            flushToClient()
            endSessionIfServerMustClose()
        }
    }

    /// ReadyForQuery messages arrived: `queries` requests and `transactions` transactions are complete.
    /// A pipelined batch is timed as a whole: its first answer carries the elapsed time, the rest count zero.
    func countCompleted(queries: Int, transactions: Int, in shard: PoolStatsShard) {
        let now = NIODeadline.now().uptimeNanoseconds
        shard.counters.recordQuery(micros: queryStartedAt == 0 ? 0 : (now &- queryStartedAt) / 1000)
        for _ in 1..<max(1, queries) { shard.counters.recordQuery(micros: 0) }
        queryStartedAt = link.tracker.awaitingServer ? now : 0
        guard transactions > 0 else { return }
        shard.counters.recordTransaction(micros: transactionStartedAt == 0 ? 0 : (now &- transactionStartedAt) / 1000)
        for _ in 1..<transactions { shard.counters.recordTransaction(micros: 0) }
        transactionStartedAt = link.tracker.awaitingServer ? now : 0
    }

    func flushToClient() {
        if needsFlush {
            needsFlush = false
            context?.flush()
        }
    }

    // MARK: Carrying out the machine's actions

    func run(_ action: LinkAction) {
        switch action {
        case .none:
            break
        case .sendToServer(let bytes):
            server?.send(bytes, flush: true)
        case .release(let session, let resetQuery):
            guard let server = unlinkServer() else { return }
            server.giveBack(session: session, resetQuery: resetQuery)
        case .giveBackUnused:
            // Only `serverAssigned` answers this, and `link(to:)` handles it there.
            break
        case .closeServer(let reason):
            unlinkServer()?.closeLent(reason: reason)
        case .fatal(let message, let code, let serverReason):
            if let serverReason { unlinkServer()?.closeLent(reason: serverReason) }
            fatal(message, code: code)
        case .leaveQueue:
            _ = pool?.withState { $0.waiterLeft(self) }
        case .serverLostAnswered(let inBlock):
            logger.warning(inBlock ? "server connection lost inside a transaction: error sent, transaction failed, client kept"
                                   : "server connection lost under a statement outside a transaction: error sent, client kept")
        case .warnPinned(let seconds):
            logger.warning("client pinned to its server for \(seconds)s holding \(link.pinned.names), since: \(link.pinStatement)")
        }
        if readPauses.contains(.pendingFull) && link.pendingBytes <= Self.pendingLimit { resumeReading(.pendingFull) }
    }

    /// Ends the link on this side: reads resume, what the server sent is flushed, the server forgets this client.
    @discardableResult
    func unlinkServer() -> ServerConnection? {
        guard let server else { return nil }
        self.server = nil
        resumeReading(.serverBusy)
        // Once unlinked, the server's read-complete no longer reaches us: flush what it sent now.
        flushToClient()
        server.detach(self)
        return server
    }

    // MARK: Outside events

    /// server_fast_close: a session between transactions whose server must close (RECONNECT, a changed entry)
    /// ends now instead of at its end; running transactions are never interrupted.
    @discardableResult
    func endSessionIfServerMustClose() -> Bool {
        guard state == .pooled, let server, link.mayEndSession, server.predatesReconnect else { return false }
        run(link.endSessionForConfigChange())
        return true
    }

    /// A client that keeps its server between transactions (session pooling, or pinned by session state) and
    /// sits idle on a host its pool may no longer use — the old side of a failover, a lagging replica — is
    /// disconnected, so nobody writes to an old primary once the new one is known. Its session state lives on
    /// that server, so it cannot move; it reconnects and lands on a host that fits. Returns whether it ended.
    @discardableResult
    func endSessionIfHostLeft() -> Bool {
        guard state == .pooled, let server, link.mayEndSession, !server.hostStillFits() else { return false }
        run(link.endSessionForHost())
        return true
    }

    /// The linked server went away under this client (see `LinkStateMachine.serverLost`).
    func linkedServerClosed(_ closed: ServerConnection) {
        guard server === closed else { return }
        server = nil
        resumeReading(.serverBusy)
        closed.lentServerGone()
        let step = link.serverLost()
        flushToClient()
        if let answer = step.toClient, let context {
            context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
        }
        run(step.action)
    }

    /// The pool could not log in to a server for this waiting client.
    func serverLoginFailed(message: String, code: String) {
        guard state == .waitingForWelcome || (state == .pooled && link.phase == .waitingForServer) else { return }
        fatal(message, code: code)
    }

    /// query_wait_timeout passed in the queue.
    func waitTimedOut() {
        guard state == .waitingForWelcome || (state == .pooled && link.phase == .waitingForServer) else { return }
        fatal("query_wait_timeout")
    }

    /// Called by this loop's sweeper about three times a second.
    func checkTimeouts(now: NIODeadline) {
        guard state == .pooled else { return }
        run(link.tick(now: now.uptimeNanoseconds))
    }

    // MARK: Cancel

    func cancelRequested(processID: Int32, secretKey: Int32) {
        // The canceller is closed silently whatever happens, like PgBouncer.
        let target = runtime.cancelRegistry.client(processID: processID, secretKey: secretKey)
        // Through the usual clean-up: a cancel connection counts against max_client_conn from accept, is in
        // the loop's registry and the login watch, and must leave all of them (no log line: still in startup).
        close(reason: "cancel request")
        guard let target else {
            // Another process's client (peering): send it on.
            return runtime.peers.forward(PeerCancelKey(processID: processID, secretKey: secretKey), on: eventLoop)
        }
        target.eventLoop.execute { target.forwardCancel() }
    }

    /// Sends a CancelRequest with the server's own key to the server serving this client right now.
    /// Aimed at a console session, it resumes a global PAUSE or SUSPEND, as in PgBouncer.
    func forwardCancel() {
        if state == .console {
            runtime.controller?.resumeAll()
            return
        }
        guard state == .pooled, let server, let key = server.backendKey, link.cancelForwarded() else { return }
        // A strong capture, held until the cancel connection closes (cancel_wait_timeout at most): a weak one
        // would give every client that ever cancelled a side table and slower reference counting.
        CancelForwarder.send(processID: key.processID, secretKey: key.secretKey, to: server.hostAddress, runtime: runtime, on: eventLoop) {
            self.run(self.link.cancelFinished())
        }
    }
}

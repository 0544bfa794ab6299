import Configuration
import NIOCore
import Pooling
import PostgresWire
import LinkModel
import Testing

extension LinkAction {
    var isRelease: Bool { if case .release = self { return true } else { return false } }
    var releasedSession: ServerSession? { if case .release(let session, _) = self { return session } else { return nil } }
    var resetQuery: String?? { if case .release(_, let reset) = self { return .some(reset) } else { return nil } }
    var sent: ByteBuffer? { if case .sendToServer(let bytes) = self { return bytes } else { return nil } }
}

/// The linked phase, event by event: what the machine forwards, queues, answers and decides.
@Suite struct LinkStateMachineTests {
    static func machine(_ mode: PoolMode = .transaction, detect: Bool = true, prepared: Int = 0,
                        configure: (inout LinkStateMachine.Options) -> Void = { _ in }) -> LinkStateMachine {
        var options = LinkStateMachine.Options(mode: mode, detectsSessionState: detect, preparedCapacity: prepared)
        options.statementNames = StatementNames()
        configure(&options)
        return LinkStateMachine(options: options, now: 0)
    }

    /// Sends `bytes` from an idle client and links it to `session`; returns what went to the server.
    static func link(_ machine: inout LinkStateMachine, _ bytes: ByteBuffer, session: ServerSession = ServerSession()) throws -> ByteBuffer? {
        let read = try machine.clientBytes(bytes, now: 0)
        #expect(read.requestServer)
        #expect(read.toServer == nil)
        return machine.serverAssigned(session).action.sent
    }

    @Test func aQueryIsQueuedSentOnLinkAndTheServerReleasedAtItsReadyForQuery() throws {
        var machine = Self.machine()
        let query = Wire.query("SELECT 1")
        #expect(try Self.link(&machine, query) == query)
        #expect(machine.phase == .linked)
        #expect(machine.releaseBlocker == .owesReplies)
        let read = machine.serverBytes(Wire.join(Wire.row("1"), Wire.complete("SELECT 1"), Wire.ready(.idle))) { true }
        #expect(read.forward == .all)
        #expect(read.readyCount == 1 && read.transactionsEnded == 1)
        #expect(read.action.isRelease)
        #expect(read.action.resetQuery == .some(nil))
        #expect(machine.phase == .idle)
    }

    /// disable_pqexec: a Query anywhere in a read ends the client, and nothing of that read is forwarded.
    @Test func aSimpleQueryIsRefusedWholeUnderDisablePqexec() throws {
        var machine = Self.machine { $0.refusesSimpleQuery = true }
        let extended = Wire.join(Wire.parse("", "SELECT 1"), Wire.bind(""), Wire.sync())
        _ = try Self.link(&machine, extended)
        _ = machine.serverBytes(Wire.join(Wire.parseComplete(), Wire.bindComplete(), Wire.ready(.idle))) { true }
        let read = try machine.clientBytes(Wire.join(Wire.parse("", "SELECT 2"), Wire.query("SELECT 3")), now: 0)
        #expect(read.protocolRefusal == "PQexec disallowed")
        #expect(read.toServer == nil && !read.requestServer && machine.phase == .idle)
    }

    /// A new config reaches a client only between its transactions: not while linked, not with half a message
    /// held; switching prepared-statement tracking off forgets the client's names.
    @Test func optionsAreReplacedOnlyAtAQuietPoint() throws {
        var machine = Self.machine(prepared: 10)
        var off = machine.options
        off.preparedCapacity = 0
        _ = try Self.link(&machine, Wire.join(Wire.parse("s1", "SELECT 1"), Wire.sync()))
        let whileLinked = machine.replaceOptions(off)
        #expect(!whileLinked, "linked")
        _ = machine.serverBytes(Wire.join(Wire.parseComplete(), Wire.ready(.idle))) { true }
        #expect(machine.phase == .idle && machine.statements.statements.count == 1)
        let query = Wire.query("SELECT 1")
        _ = try machine.clientBytes(query.getSlice(at: 0, length: 3)!, now: 0)
        let whileHolding = machine.replaceOptions(off)
        #expect(!whileHolding, "half a header held")
        _ = try machine.clientBytes(query.getSlice(at: 3, length: query.readableBytes - 3)!, now: 0)
        _ = machine.serverAssigned(ServerSession())
        _ = machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.idle))) { true }
        let whenQuiet = machine.replaceOptions(off)
        #expect(whenQuiet)
        #expect(!machine.options.tracksPrepared && machine.statements.statements.isEmpty)
    }

    /// Found by the fuzz-link-raw target: a server that goes on after the ReadyForQuery that ends the client's
    /// work with a message nobody asked for is not clean: it is closed, never given back. Half a message after it
    /// (an asynchronous one split across reads, or worse) keeps the server with its client until it ends; a whole
    /// asynchronous message (notice, parameter status, notification) is fine.
    enum After: Sendable { case dirty, held, clean }
    @Test(arguments: [
        (Wire.join(Wire.ready(.idle), Wire.row("1")), After.dirty),
        (Wire.join(Wire.ready(.idle), Wire.message(0, { $0.writeInteger(Int32(826_408_960)) })), .dirty),
        (Wire.join(Wire.ready(.idle), Wire.row("1").getSlice(at: 0, length: 3)!), .held),
        (Wire.join(Wire.ready(.idle), Wire.parameterStatus("TimeZone", "UTC").getSlice(at: 0, length: 9)!), .held),
        (Wire.join(Wire.ready(.idle), Wire.parameterStatus("TimeZone", "UTC")), .clean),
    ])
    func aServerTalkingAfterItsLastReadyForQueryIsNotGivenBack(after: ByteBuffer, expected: After) throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("SELECT 1"))
        let action = machine.serverBytes(Wire.join(Wire.row("1"), Wire.complete("SELECT 1"), after)) { true }.action
        switch expected {
        case .dirty:
            guard case .closeServer(let reason) = action else { Issue.record("\(action)"); return }
            #expect(reason == "idle server got dirty")
            #expect(machine.phase == .idle)
        case .held:
            #expect(!action.isRelease && machine.phase == .linked)
            #expect(machine.releaseBlocker == .serverMidMessage)
            #expect(machine.clientClosed().closesServer, "a client leaving now does not hand it on either")
        case .clean:
            #expect(action.isRelease)
        }
    }

    /// Found by fuzz-link-raw (a long fuzz run): a "ReadyForQuery" of 255 bytes starting with 'I' released the
    /// server with the rest of the message still to come. A ReadyForQuery must be 5 bytes long.
    @Test func aMalformedReadyForQueryClosesTheServer() throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("SELECT 1"))
        let long = Wire.message(BackendMessage.readyForQuery) { $0.writeInteger(UInt8(ascii: "I")); $0.writeRepeatingByte(0, count: 250) }
        let read = machine.serverBytes(Wire.join(Wire.row("1"), Wire.complete("SELECT 1"), long.getSlice(at: 0, length: 20)!)) { true }
        guard case .fatal(_, _, let reason) = read.action else { Issue.record("\(read.action)"); return }
        #expect(reason == "bad packet from server")
        #expect(read.forward == .none)
        // And one with a status that is not I, T or E (also found by fuzz-link-raw: the server then went back to
        // the pool when its client left).
        var other = Self.machine()
        _ = try Self.link(&other, Wire.query("SELECT 1"))
        let odd = other.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.message(BackendMessage.readyForQuery) { $0.writeInteger(UInt8(9)) })) { true }
        guard case .fatal(_, _, "bad packet from server") = odd.action else { Issue.record("\(odd.action)"); return }
    }

    @Test func aTransactionBlockKeepsTheServerUntilItEnds() throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("BEGIN"))
        #expect(!machine.serverBytes(Wire.join(Wire.complete("BEGIN"), Wire.ready(.inTransaction))) { true }.action.isRelease)
        let read = try machine.clientBytes(Wire.query("SELECT 1"), now: 0)
        #expect(read.toServer != nil && !read.requestServer, "linked: forwarded at once")
        #expect(!machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.inTransaction))) { true }.action.isRelease)
        _ = try machine.clientBytes(Wire.query("COMMIT"), now: 0)
        #expect(machine.serverBytes(Wire.join(Wire.complete("COMMIT"), Wire.ready(.idle))) { true }.action.isRelease)
    }

    @Test func aClientLeavingInCopyClosesItsServer() throws {
        var machine = Self.machine()
        // Extended-protocol COPY: the Sync is ignored in copy-in, so no ReadyForQuery is owed while it runs.
        _ = try Self.link(&machine, Wire.join(Wire.parse("", "COPY t FROM STDIN"), Wire.bind(""), Wire.execute(), Wire.sync()))
        _ = machine.serverBytes(Wire.join(Wire.parseComplete(), Wire.bindComplete(), Wire.copyIn())) { true }
        #expect(machine.tracker.pendingReadyForQuery == 0)
        #expect(machine.releaseBlocker == .owesReplies, "in COPY")
        #expect(machine.clientClosed().closesServer)
    }

    @Test func aSetCountsOnlyOnceConfirmedAndAFailedOneIsForgotten() throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("SET search_path = x"))
        #expect(machine.parameters.session.isEmpty, "sent, not confirmed")
        let released = machine.serverBytes(Wire.join(Wire.complete("SET"), Wire.ready(.idle))) { true }.action.releasedSession
        #expect(machine.parameters.session["search_path"] == "x")
        #expect(released?.parameters.session["search_path"] == "x", "the server's view moves with PostgreSQL's confirmation")

        var failing = Self.machine()
        _ = try Self.link(&failing, Wire.query("SET work_mem = 'not_a_size'"))
        _ = failing.serverBytes(Wire.join(Wire.error("22023", "invalid value"), Wire.ready(.idle))) { true }
        #expect(failing.parameters.session.isEmpty)

        var rolledBack = Self.machine()
        _ = try Self.link(&rolledBack, Wire.query("BEGIN"))
        _ = rolledBack.serverBytes(Wire.join(Wire.complete("BEGIN"), Wire.ready(.inTransaction))) { true }
        _ = try rolledBack.clientBytes(Wire.query("SET search_path = y"), now: 0)
        _ = rolledBack.serverBytes(Wire.join(Wire.complete("SET"), Wire.ready(.inTransaction))) { true }
        _ = try rolledBack.clientBytes(Wire.query("ROLLBACK"), now: 0)
        let session = rolledBack.serverBytes(Wire.join(Wire.complete("ROLLBACK"), Wire.ready(.idle))) { true }.action.releasedSession
        #expect(rolledBack.parameters.session.isEmpty)
        #expect(session?.parameters.session["search_path"] == ParameterSet.unknownValue, "uncertain: reset before its next use")
    }

    @Test func theReplayGoesFirstAndTheRequestWaitsForItsConfirmation() throws {
        var machine = Self.machine()
        var server = ServerSession()
        server.parameters.setSession("search_path", rawValue: "other")
        let query = Wire.query("SELECT 1")
        let sent = try Self.link(&machine, query, session: server)
        #expect(sent == Wire.query("RESET search_path;"))
        #expect(machine.releaseBlocker != nil)
        // More of the client's bytes while the replay runs are queued too.
        #expect(try machine.clientBytes(Wire.query("SELECT 2"), now: 0).toServer == nil)
        let read = machine.serverBytes(Wire.join(Wire.complete("RESET"), Wire.ready(.idle))) { true }
        #expect(read.forward == .none, "the replay's answer is Shoal's")
        #expect(read.action.sent == Wire.join(query, Wire.query("SELECT 2")))
    }

    @Test func aRefusedReplayAnswersTheRequestWithAnErrorNotAFatal() throws {
        var machine = Self.machine()
        machine.parameters.setSession("work_mem", rawValue: "'64MB'")
        _ = try Self.link(&machine, Wire.query("SELECT 1"))
        let read = machine.serverBytes(Wire.join(Wire.error("22023", "invalid value for parameter"), Wire.ready(.idle))) { true }
        var answer = try #require(read.toClientAfter)
        #expect(answer.readInteger(as: UInt8.self) == BackendMessage.errorResponse)
        #expect(read.action.isRelease)
        #expect(machine.parameters.session.isEmpty, "the client takes the server's values")
        #expect(read.action.releasedSession?.parameters.session["work_mem"] == ParameterSet.unknownValue)
    }

    @Test func aCancelInFlightKeepsTheServerUntilItLands() throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("SELECT pg_sleep(10)"))
        let forwarded = machine.cancelForwarded()
        #expect(forwarded)
        let read = machine.serverBytes(Wire.join(Wire.error("57014", "canceling statement due to user request"), Wire.ready(.idle))) { true }
        #expect(!read.action.isRelease)
        #expect(machine.releaseBlocker == .cancelInFlight)
        let landed = machine.cancelFinished()
        #expect(landed.isRelease)
    }

    @Test func aClientLeavingWithACancelInFlightClosesItsServer() throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("SELECT pg_sleep(10)"))
        _ = machine.cancelForwarded()
        _ = machine.serverBytes(Wire.join(Wire.error("57014", "canceling"), Wire.ready(.idle))) { true }
        let closed = machine.clientClosed()
        #expect(closed.closesServer)
        let landed = machine.cancelFinished()
        #expect(!landed.isRelease)
    }

    @Test func deallocateAllMarksTheNextServersStatementsUncertain() throws {
        var machine = Self.machine(detect: false, prepared: 10)
        _ = try Self.link(&machine, Wire.query("DEALLOCATE ALL"))
        let session = machine.serverBytes(Wire.join(Wire.complete("DEALLOCATE ALL"), Wire.ready(.idle))) { true }.action.releasedSession
        #expect(session?.statements.mayHoldUncounted == true)
    }

    @Test func namedStatementsAreRewrittenAndPreparedOnEachServer() throws {
        var machine = Self.machine(detect: false, prepared: 10)
        let sent = try #require(try Self.link(&machine, Wire.join(Wire.parse("q", "SELECT 1"), Wire.sync())))
        var copy = sent
        #expect(copy.readInteger(as: UInt8.self) == FrontendMessage.parse)
        #expect(sent.readableBytes > Wire.join(Wire.parse("q", "SELECT 1"), Wire.sync()).readableBytes, "named shoal_n on the server")
        let session = machine.serverBytes(Wire.join(Wire.parseComplete(), Wire.ready(.idle))) { true }.action.releasedSession
        #expect(session?.statements.count == 1)
        // On another server, a Bind of q first prepares it there; the injected Parse's answer is not forwarded.
        let bound = try #require(try Self.link(&machine, Wire.join(Wire.bind("q"), Wire.execute(), Wire.sync())))
        #expect(bound.getInteger(at: bound.readerIndex, as: UInt8.self) == FrontendMessage.parse)
        let answer = Wire.join(Wire.parseComplete(), Wire.bindComplete(), Wire.complete("SELECT 1"), Wire.ready(.idle))
        let read = machine.serverBytes(answer) { true }
        #expect(read.forward == .ranges([5..<answer.readableBytes]), "the injected Parse's ParseComplete is dropped")
    }

    /// An unnamed Bind (PHP's pg_query_params) is never held, whatever its size: its first read goes on at once,
    /// and nothing of it stays in the machine. A named one is held until whole, so it can be renamed.
    @Test func anUnnamedBindStreamsAndANamedOneIsHeldUntilWhole() throws {
        var machine = Self.machine(detect: false, prepared: 10)
        _ = try Self.link(&machine, Wire.join(Wire.parse("q", "SELECT $1"), Wire.sync()))
        _ = machine.serverBytes(Wire.join(Wire.parseComplete(), Wire.ready(.idle))) { true }
        let big = Wire.message(FrontendMessage.bind) {
            $0.writeCString(""); $0.writeCString("")
            $0.writeInteger(Int16(0)); $0.writeInteger(Int16(1)); $0.writeInteger(Int32(3 << 20))
            $0.writeRepeatingByte(65, count: 3 << 20); $0.writeInteger(Int16(0))
        }
        let first = big.getSlice(at: 0, length: 64 << 10)!
        let rest = big.getSlice(at: 64 << 10, length: big.readableBytes - (64 << 10))!
        #expect(try Self.link(&machine, first)?.readableBytes == 64 << 10, "sent on as it came")
        #expect(machine.pendingBytes == 0)
        #expect(try machine.clientBytes(rest, now: 0).toServer?.readableBytes == rest.readableBytes)

        var named = Self.machine(detect: false, prepared: 10)
        _ = try Self.link(&named, Wire.join(Wire.parse("q", "SELECT $1"), Wire.sync()))
        _ = named.serverBytes(Wire.join(Wire.parseComplete(), Wire.ready(.idle))) { true }
        let bind = Wire.bind("q")
        #expect(try named.clientBytes(bind.getSlice(at: 0, length: 9)!, now: 0).requestServer == false, "held: nothing to send yet")
        let whole = try named.clientBytes(bind.getSlice(at: 9, length: bind.readableBytes - 9)!, now: 0)
        #expect(whole.requestServer)
    }

    /// A Parse naming a statement longer than the machine holds is refused (54000 at the glue) instead of being
    /// gathered up to max_packet_size.
    @Test func aNamedStatementMessageTooLongToHoldIsRefused() throws {
        var machine = Self.machine(detect: false, prepared: 10)
        var header = ByteBuffer()
        header.writeInteger(FrontendMessage.parse)
        header.writeInteger(Int32(LinkStateMachine.heldStatementLimit + 100))
        header.writeCString("big")
        header.writeString("SELECT ")
        #expect(throws: FrameScanError.tooLongToHold(type: FrontendMessage.parse, length: LinkStateMachine.heldStatementLimit + 101,
                                                      limit: LinkStateMachine.heldStatementLimit)) {
            _ = try machine.clientBytes(header, now: 0)
        }
    }

    /// A Query too long to gather for the session-state scan streams through; since what it did is unknown, the
    /// server is probed after it and cleaned with DISCARD ALL before another client has it.
    @Test func aQueryTooLongToScanIsProbedAndItsServerDiscarded() throws {
        var machine = Self.machine()
        var query = ByteBuffer()
        query.writeQuery("SELECT '" + String(repeating: "x", count: LinkStateMachine.scannedStatementLimit + 10) + "'")
        let first = query.getSlice(at: 0, length: 64 << 10)!
        let rest = query.getSlice(at: 64 << 10, length: query.readableBytes - (64 << 10))!
        _ = try Self.link(&machine, first)
        _ = try machine.clientBytes(rest, now: 0)
        let answered = machine.serverBytes(Wire.join(Wire.row("x"), Wire.complete("SELECT 1"), Wire.ready(.idle))) { true }
        let probe = try #require(answered.action.sent, "\(answered.action)")
        var text = probe
        text.moveReaderIndex(forwardBy: 5)
        #expect(text.readNullTerminatedString() == SessionStateProbe.sql)
        // The probe finds nothing held: the server goes back, with DISCARD ALL.
        var row = ByteBuffer()
        row.writeDataRow(["0", "0", "0", "0", "0"])
        let released = machine.serverBytes(Wire.join(row, Wire.complete("SELECT 1"), Wire.ready(.idle))) { true }.action
        #expect(released.resetQuery == .some("DISCARD ALL"), "\(released)")
    }

    @Test func aLostServerInATransactionLeavesTheClientInAFailedBlock() throws {
        var machine = Self.machine()
        _ = try Self.link(&machine, Wire.query("BEGIN"))
        _ = machine.serverBytes(Wire.join(Wire.complete("BEGIN"), Wire.ready(.inTransaction))) { true }
        _ = try machine.clientBytes(Wire.query("SELECT 1"), now: 0)
        let step = machine.serverLost()
        #expect(step.toClient != nil)
        guard case .serverLostAnswered(inBlock: true) = step.action else { Issue.record("\(step.action)"); return }
        #expect(machine.inLostTransaction)
        // The client's ROLLBACK is answered by Shoal, not sent anywhere.
        let read = try machine.clientBytes(Wire.query("ROLLBACK"), now: 0)
        #expect(read.toClient != nil && read.toServer == nil && !read.requestServer)
        #expect(!machine.inLostTransaction)
    }

    @Test func timeoutsCloseTheServerOnlyWhenItHoldsTheClientsWork() throws {
        var machine = Self.machine { $0.queryTimeout = 1; $0.clientIdleTimeout = 5 }
        _ = try Self.link(&machine, Wire.query("SELECT pg_sleep(10)"))
        #expect(machine.tick(now: 500_000_000).closesServer == false)
        guard case .fatal("query timeout", _, "query timeout") = machine.tick(now: 1_500_000_000) else { Issue.record("no query timeout"); return }
        #expect(machine.phase == .idle)

        var idle = Self.machine { $0.clientIdleTimeout = 5 }
        guard case .fatal("client_idle_timeout", _, nil) = idle.tick(now: 6_000_000_000) else { Issue.record("no idle timeout"); return }
    }

    /// idle_transaction_timeout counts from the end of the last statement: a statement that ran longer than the
    /// timeout is not killed the moment it ends (PgBouncer counts from the last ReadyForQuery too).
    @Test func idleTransactionTimeoutCountsFromTheLastAnswer() throws {
        let second: UInt64 = 1_000_000_000
        var machine = Self.machine { $0.idleTransactionTimeout = 1 }
        _ = try Self.link(&machine, Wire.query("BEGIN"))
        _ = machine.serverBytes(Wire.join(Wire.complete("BEGIN"), Wire.ready(.inTransaction))) { true }
        _ = try machine.clientBytes(Wire.query("SELECT pg_sleep(2)"), now: 0)
        #expect(machine.tick(now: second).closesServer == false, "a running statement is query_timeout's business")
        _ = machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.inTransaction))) { true }
        #expect(machine.tick(now: 2 * second + second / 10).closesServer == false, "idle for 0 s, not 2.1 s")
        guard case .fatal("idle transaction timeout", _, .some) = machine.tick(now: 3 * second + second / 5) else {
            Issue.record("no idle transaction timeout after 1.1 s idle"); return
        }
    }

    /// transaction_timeout: a block open that long ends, busy or idle; outside a block the clock stops.
    @Test func transactionTimeoutEndsALongBlockWhateverItDoes() throws {
        let second: UInt64 = 1_000_000_000
        var machine = Self.machine { $0.transactionTimeout = 2 }
        _ = try Self.link(&machine, Wire.query("BEGIN"))
        _ = machine.serverBytes(Wire.join(Wire.complete("BEGIN"), Wire.ready(.inTransaction))) { true }
        #expect(machine.tick(now: second / 2).closesServer == false, "the block is first seen here")
        for step in 1...3 {
            let now = second / 2 + UInt64(step) * second / 2
            _ = try machine.clientBytes(Wire.query("SELECT 1"), now: now)
            _ = machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.inTransaction))) { true }
            #expect(machine.tick(now: now).closesServer == false, "\(step)")
        }
        guard case .fatal("transaction timeout", _, .some) = machine.tick(now: 2 * second + second * 6 / 10) else {
            Issue.record("a block open 2.1 s outlived transaction_timeout = 2"); return
        }

        var short = Self.machine { $0.transactionTimeout = 2 }
        _ = try Self.link(&short, Wire.query("BEGIN"))
        _ = short.serverBytes(Wire.join(Wire.complete("BEGIN"), Wire.ready(.inTransaction))) { true }
        _ = short.tick(now: second)
        _ = try short.clientBytes(Wire.query("COMMIT"), now: second)
        _ = short.serverBytes(Wire.join(Wire.complete("COMMIT"), Wire.ready(.idle))) { true }
        #expect(short.tick(now: 5 * second).closesServer == false, "outside a block nothing counts")
    }

    @Test func sessionModeNeverReleasesBetweenTransactions() throws {
        var machine = Self.machine(.session)
        _ = try Self.link(&machine, Wire.query("SELECT 1"))
        #expect(!machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.idle))) { true }.action.isRelease)
        #expect(machine.clientClosed().isRelease)
    }

    @Test func aSessionWhoseHostLeftEndsAtItsTransactionsEnd() throws {
        var machine = Self.machine(.session)
        _ = try Self.link(&machine, Wire.query("SELECT 1"))
        guard case .fatal(_, "57P01", .some) = machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.idle))) { false }.action
        else { Issue.record("the session was kept on a host that left"); return }
    }

    @Test func aBadLengthFromTheClientIsAnError() throws {
        var machine = Self.machine()
        var bad = ByteBuffer()
        bad.writeInteger(UInt8(ascii: "Q"))
        bad.writeInteger(Int32(2))
        #expect(throws: FrameScanError.self) { _ = try machine.clientBytes(bad, now: 0) }
    }

    // MARK: Splits

    /// Every message split at every byte: the server gets exactly the client's bytes, once, and Terminate ends it.
    @Test(arguments: [0, 10]) func clientBytesSplitAtEveryBoundaryReachTheServerWhole(prepared: Int) throws {
        let stream = Wire.join(Wire.parse("", "SELECT 1"), Wire.bind(""), Wire.execute(), Wire.sync(), Wire.query("SELECT 2"),
                               Wire.query("COPY t FROM STDIN"), Wire.copyData(40), Wire.copyDone(), Wire.sync(), Wire.terminate())
        let withoutTerminate = stream.getSlice(at: 0, length: stream.readableBytes - 5)!
        for cut in 1..<stream.readableBytes {
            var machine = Self.machine(prepared: prepared)
            _ = try Self.link(&machine, Wire.query("SELECT 0"))
            _ = machine.serverBytes(Wire.join(Wire.complete("SELECT 1"), Wire.ready(.inTransaction))) { true }
            var sent = ByteBuffer()
            var terminated = 0
            for piece in [stream.getSlice(at: 0, length: cut)!, stream.getSlice(at: cut, length: stream.readableBytes - cut)!] {
                let read = try machine.clientBytes(piece, now: 0)
                if var bytes = read.toServer { sent.writeBuffer(&bytes) }
                if read.terminated { terminated += 1 }
            }
            #expect(sent == withoutTerminate, "cut at \(cut)")
            #expect(terminated == 1, "cut at \(cut)")
        }
    }

    /// A server's answer split at every byte: the client gets exactly those bytes, and the server goes back once,
    /// after the last ReadyForQuery — never at a split ErrorResponse or CopyData.
    @Test func serverBytesSplitAtEveryBoundaryAreForwardedWholeAndReleasedOnce() throws {
        let answer = Wire.join(Wire.row("1"), Wire.complete("SELECT 1"), Wire.ready(.idle), Wire.error(), Wire.ready(.idle),
                               Wire.parameterStatus("application_name", "x"), Wire.complete("SELECT 1"), Wire.ready(.idle))
        for cut in 1..<answer.readableBytes {
            var machine = Self.machine()
            _ = try Self.link(&machine, Wire.join(Wire.query("SELECT 1"), Wire.query("SELECT 1/0"), Wire.query("SELECT 1")))
            var forwarded = ByteBuffer()
            var releases = 0
            for piece in [answer.getSlice(at: 0, length: cut)!, answer.getSlice(at: cut, length: answer.readableBytes - cut)!] {
                let read = machine.serverBytes(piece) { true }
                #expect(read.forward == .all, "cut at \(cut)")
                var copy = piece
                forwarded.writeBuffer(&copy)
                if read.action.isRelease { releases += 1 }
            }
            #expect(forwarded == answer)
            #expect(releases == 1, "cut at \(cut)")
            #expect(machine.parameters["application_name"] == "x")
        }
    }

    /// The replay's answer split anywhere: none of it reaches the client, and the queued request goes once.
    @Test func aReplayAnswerSplitAnywhereIsSwallowedWhole() throws {
        let answer = Wire.join(Wire.complete("SET"), Wire.parameterStatus("TimeZone", "UTC"), Wire.ready(.idle))
        for cut in 1..<answer.readableBytes {
            var machine = Self.machine()
            machine.parameters.setSession("statement_timeout", rawValue: "'5s'")
            _ = try Self.link(&machine, Wire.query("SELECT 1"))
            var sends = 0
            for piece in [answer.getSlice(at: 0, length: cut)!, answer.getSlice(at: cut, length: answer.readableBytes - cut)!] {
                let read = machine.serverBytes(piece) { true }
                #expect(read.forward == .none, "cut at \(cut)")
                if read.action.sent != nil { sends += 1 }
            }
            #expect(sends == 1, "cut at \(cut)")
            #expect(machine.releaseBlocker == .owesReplies)
        }
    }
}

import CEpoll
import CLibPQ
import Glibc

/// Drives many libpq connections from one thread with libpq's non-blocking API on an epoll loop
/// (PQconnectStart/PQconnectPoll, PQsendQueryParams, PQconsumeInput/PQisBusy/PQgetResult), the way thousands
/// of PHP workers would hit a pooler, without a thread per connection.
public final class LoadRunner {
    public enum Mode: Sendable {
        /// N virtual users, each starting its next request as soon as the last one ends.
        case closed(users: Int)
        /// Requests started at a fixed rate, at most `maxInFlight` at once; latency counts from the intended
        /// start, so a stall shows in the percentiles instead of lowering the offered load (coordinated omission).
        case open(rate: Double, maxInFlight: Int)
    }

    private enum Phase { case idle, connecting, running(statement: Int), finishing }

    private final class User {
        var connection: OpaquePointer?
        var phase: Phase = .idle
        var requestStart: UInt64 = 0
        var stepStart: UInt64 = 0
        var registeredFD: Int32 = -1
        var failed = false
    }

    private let conninfo: String
    private let workload: Workload
    private let mode: Mode
    private var random = RandomSource(seed: UInt64(truncatingIfNeeded: clock()))
    private let epollFD: Int32
    private var users: [User] = []
    private var stats: TargetStats
    private var inFlight = 0
    /// Closed-loop users whose next request starts at the top of the loop (never recursively: a request can
    /// fail synchronously, and a retry loop on the stack would never end).
    private var restartQueue: [Int] = []
    /// Open loop: users with no request in flight, ready for the next intended start.
    private var freeUsers: [Int] = []
    private var perSecondStart: UInt64 = 0

    /// Closed loop: users start evenly spread over this many seconds instead of all at once.
    public var rampUp: Double = 0
    /// Stop once this many requests have completed (nil: run for the whole duration).
    public var requestLimit: Int?

    public init(name: String, conninfo: String, workload: Workload, mode: Mode) {
        self.conninfo = conninfo
        self.workload = workload
        self.mode = mode
        self.epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        self.stats = TargetStats(name: name)
    }

    deinit {
        for user in users { if let connection = user.connection { PQfinish(connection) } }
        close(epollFD)
    }

    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    /// Runs for `seconds`, calling `progress` about once a second; returns what was measured.
    public func run(seconds: Double, progress: (TargetStats, Int) -> Void) -> TargetStats {
        let start = Self.now()
        let end = start + UInt64(seconds * 1e9)
        perSecondStart = start
        stats.perSecond = [0]
        var nextProgress = start + 1_000_000_000
        var nextIntended = start
        switch mode {
        case .closed(let count):
            users = (0..<count).map { _ in User() }
            if rampUp <= 0 {
                for index in users.indices { startRequest(index, intended: Self.now()) }
            }
        case .open(_, let maxInFlight):
            users = (0..<maxInFlight).map { _ in User() }
            freeUsers = Array(users.indices.reversed())
        }
        var events = [epoll_event](repeating: epoll_event(), count: 512)
        var started = rampUp > 0 ? 0 : users.count
        while true {
            let now = Self.now()
            if now >= end { break }
            if let requestLimit, stats.requests + stats.errorCount >= requestLimit { break }
            if case .closed = mode, started < users.count {
                // Ramp-up: user i starts at i/count of the ramp-up time.
                let due = min(users.count, Int(Double(now - start) / (rampUp * 1e9) * Double(users.count)) + 1)
                while started < due {
                    startRequest(started, intended: now)
                    started += 1
                }
            }
            if !restartQueue.isEmpty {
                let ready = restartQueue
                restartQueue.removeAll(keepingCapacity: true)
                for index in ready { startRequest(index, intended: now) }
            }
            if case .open(let rate, _) = mode {
                // Start every request whose intended time has come, if a user slot is free.
                let interval = UInt64(1e9 / rate)
                while nextIntended <= now, let free = freeUsers.popLast() {
                    startRequest(free, intended: nextIntended)
                    nextIntended += interval
                }
            }
            if now >= nextProgress {
                progress(stats, inFlight)
                nextProgress += 1_000_000_000
            }
            let timeout: Int32 = restartQueue.isEmpty ? Int32(max(1, min(100, Int((end - now) / 1_000_000)))) : 0
            let count = epoll_wait(epollFD, &events, Int32(events.count), timeout)
            if count < 0 { continue }
            for event in events.prefix(Int(count)) {
                advance(Int(event.data.u64))
            }
        }
        stats.seconds = Double(Self.now() - start) / 1e9
        for index in users.indices where users[index].connection != nil {
            // Requests still in flight at the end are neither counted nor errors.
            PQfinish(users[index].connection)
            users[index].connection = nil
        }
        return stats
    }

    // MARK: Virtual users

    private func startRequest(_ index: Int, intended: UInt64) {
        let user = users[index]
        user.requestStart = intended
        inFlight += 1
        if let connection = user.connection, PQstatus(connection) == CONNECTION_OK {
            sendStatement(index, 0)
            return
        }
        if let connection = user.connection { PQfinish(connection); user.connection = nil; user.registeredFD = -1 }
        user.stepStart = Self.now()
        guard let connection = PQconnectStart(conninfo) else { return fail(index, code: "08001") }
        user.connection = connection
        user.phase = .connecting
        pollConnect(index)
    }

    private func pollConnect(_ index: Int) {
        let user = users[index]
        guard let connection = user.connection else { return }
        switch PQconnectPoll(connection) {
        case PGRES_POLLING_READING: watch(index, writable: false)
        case PGRES_POLLING_WRITING: watch(index, writable: true)
        case PGRES_POLLING_OK:
            PQsetnonblocking(connection, 1)
            stats.connect.record((Self.now() - user.stepStart) / 1000)
            if workload.statements.isEmpty {
                // The idle workload: a connection is the whole request, and it is kept open, unwatched.
                user.phase = .finishing
                stats.requests += 1
                inFlight -= 1
                return
            }
            sendStatement(index, 0)
        default:
            fail(index, code: sqlState(connection) ?? "08001")
        }
    }

    private func sendStatement(_ index: Int, _ number: Int) {
        let user = users[index]
        guard let connection = user.connection else { return }
        user.phase = .running(statement: number)
        user.stepStart = Self.now()
        let statement = workload.statements[number]
        let sent: Int32
        if let parameters = statement.parameters {
            let values = parameters(&random)
            let cStrings = values.map { strdup($0) }
            defer { cStrings.forEach { free($0) } }
            sent = cStrings.withUnsafeBufferPointer { buffer in
                buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                    PQsendQueryParams(connection, statement.sql, Int32(values.count), nil, $0, nil, nil, 0)
                }
            }
        } else {
            sent = PQsendQuery(connection, statement.sql)
        }
        guard sent == 1 else { return fail(index, code: "08006") }
        watch(index, writable: PQflush(connection) == 1)
    }

    private func advance(_ index: Int) {
        let user = users[index]
        guard let connection = user.connection else { return }
        switch user.phase {
        case .connecting:
            pollConnect(index)
        case .running(let number):
            if PQflush(connection) == 1 { return watch(index, writable: true) }
            guard PQconsumeInput(connection) == 1 else { return fail(index, code: "08006") }
            var errorCode: String?
            while PQisBusy(connection) == 0 {
                guard let result = PQgetResult(connection) else {
                    // All results of this statement are in.
                    stats.statements += 1
                    stats.query.record((Self.now() - user.stepStart) / 1000)
                    if let errorCode { return fail(index, code: errorCode, keepConnection: true) }
                    if number + 1 < workload.statements.count { return sendStatement(index, number + 1) }
                    return finishRequest(index)
                }
                let status = PQresultStatus(result)
                if status == PGRES_FATAL_ERROR {
                    errorCode = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) } ?? "XX000"
                }
                PQclear(result)
            }
            watch(index, writable: false)
        case .idle, .finishing:
            break
        }
    }

    private func finishRequest(_ index: Int) {
        let user = users[index]
        stats.requests += 1
        countSecond()
        stats.request.record((Self.now() - user.requestStart) / 1000)
        if workload.connectPerRequest, let connection = user.connection {
            PQfinish(connection)
            user.connection = nil
            user.registeredFD = -1
        }
        if workload.idleAfterFirstRequest {
            // Kept open and unwatched from now on, like the idle workload's connections.
            inFlight -= 1
            user.phase = .finishing
            return
        }
        requestEnded(index)
    }

    private func fail(_ index: Int, code: String, keepConnection: Bool = false) {
        let user = users[index]
        stats.errors[code, default: 0] += 1
        if let connection = user.connection, !keepConnection || PQstatus(connection) != CONNECTION_OK {
            PQfinish(connection)
            user.connection = nil
            user.registeredFD = -1
        } else if let connection = user.connection, PQtransactionStatus(connection) != PQTRANS_IDLE {
            // A failed transaction: end it, as PHP code would with ROLLBACK, before the next request.
            PQclear(PQexec(connection, "ROLLBACK"))
        }
        requestEnded(index)
    }

    private func requestEnded(_ index: Int) {
        inFlight -= 1
        users[index].phase = .idle
        switch mode {
        case .closed: restartQueue.append(index)
        case .open: freeUsers.append(index)
        }
    }

    private func countSecond() {
        let second = Int((Self.now() - perSecondStart) / 1_000_000_000)
        while stats.perSecond.count <= second { stats.perSecond.append(0) }
        stats.perSecond[second] += 1
    }

    /// (Re-)arms the user's socket, one-shot, for reading or writing.
    private func watch(_ index: Int, writable: Bool) {
        let user = users[index]
        guard let connection = user.connection else { return }
        let fd = PQsocket(connection)
        guard fd >= 0 else { return fail(index, code: "08006") }
        var event = epoll_event()
        event.events = (writable ? EPOLLOUT.rawValue : EPOLLIN.rawValue) | EPOLLONESHOT.rawValue
        event.data.u64 = UInt64(index)
        if user.registeredFD == fd {
            epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event)
        } else {
            if epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) != 0 { epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) }
            user.registeredFD = fd
        }
    }

    private func sqlState(_ connection: OpaquePointer) -> String? {
        let message = String(cString: PQerrorMessage(connection))
        return message.contains("password") || message.contains("authentication") ? "28P01" : nil
    }
}

/// Limits on what one source address may do before it has logged in: how many of its connections may wait
/// in the login phase at once, and how many failed logins it may make per minute. A flood of connections that
/// never authenticate, or a password guesser, then cannot take the capacity others need. Pure; its owner keeps
/// it under a lock. Unix-socket peers are local and not limited.
public struct LoginLimits: Sendable {
    public var maxPendingPerAddress: Int
    public var maxFailuresPerMinute: Int
    private var pending: [String: Int] = [:]
    /// Failed logins per address: the minute they fall in (uptime seconds / 60) and how many.
    private var failures: [String: (minute: UInt64, count: Int)] = [:]

    public init(maxPendingPerAddress: Int = 0, maxFailuresPerMinute: Int = 0) {
        self.maxPendingPerAddress = maxPendingPerAddress
        self.maxFailuresPerMinute = maxFailuresPerMinute
    }

    public enum Refusal: Equatable, Sendable {
        case tooManyPending(limit: Int)
        case tooManyFailures(limit: Int)

        /// PgBouncer-style wording for the FATAL and the log.
        public var message: String {
            switch self {
            case .tooManyPending(let limit): return "too many connections from this address waiting to log in (max_pending_logins_per_address = \(limit))"
            case .tooManyFailures(let limit): return "too many failed logins from this address (max_failed_logins_per_minute = \(limit)), try again later"
            }
        }
    }

    /// A connection from `address` was accepted. On nil it counts as pending until `loginEnded`.
    public mutating func connectionAccepted(from address: String, nowSeconds: UInt64) -> Refusal? {
        if maxFailuresPerMinute > 0, let recent = failures[address], recent.minute == nowSeconds / 60, recent.count >= maxFailuresPerMinute {
            return .tooManyFailures(limit: maxFailuresPerMinute)
        }
        let count = pending[address, default: 0]
        if maxPendingPerAddress > 0 && count >= maxPendingPerAddress { return .tooManyPending(limit: maxPendingPerAddress) }
        pending[address] = count + 1
        return nil
    }

    /// A pending connection logged in, failed, or went away.
    public mutating func loginEnded(from address: String) {
        guard let count = pending[address] else { return }
        if count <= 1 { pending[address] = nil } else { pending[address] = count - 1 }
    }

    /// A login from `address` failed (wrong password, unknown user).
    public mutating func loginFailed(from address: String, nowSeconds: UInt64) {
        let minute = nowSeconds / 60
        if let recent = failures[address], recent.minute == minute {
            failures[address] = (minute, recent.count + 1)
        } else {
            failures[address] = (minute, 1)
        }
        // Forget addresses whose minute has passed, so the table holds only this minute's.
        if failures.count > 4096 { failures = failures.filter { $0.value.minute == minute } }
    }

    public func pendingCount(from address: String) -> Int { pending[address, default: 0] }
}

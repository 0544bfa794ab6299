import Configuration
import Pooling
import Testing

@Suite struct HostTableTests {
    let w = HostAddress(host: "w", port: 5432)
    let r1 = HostAddress(host: "r1", port: 5432)
    let r2 = HostAddress(host: "r2", port: 5432)
    var all: [HostAddress] { [w, r1, r2] }

    func healthyTable(maxLag: Double = 0) -> HostTable {
        var table = HostTable(maxReplicaLag: maxLag)
        _ = table.track(all)
        _ = table.checkSucceeded(w, inRecovery: false, lag: 0, latency: 0.001, now: 1)
        _ = table.checkSucceeded(r1, inRecovery: true, lag: 0, latency: 0.001, now: 1)
        _ = table.checkSucceeded(r2, inRecovery: true, lag: 0, latency: 0.001, now: 1)
        return table
    }

    @Test func unknownHostsServeOnlyAnyPools() {
        var table = HostTable()
        #expect(table.track(all) == all)
        #expect(table.choose(for: .any, among: all, turn: 1) == r1)
        #expect(table.choose(for: .readWrite, among: all, turn: 0) == nil)
        #expect(table.choose(for: .readOnly, among: all, turn: 0) == nil)
    }

    /// Hosts whose checks cannot run (no check user) learn their role from the connections pools open, as
    /// libpq does: a writer pool connects to an unknown host to find out, then to a replica (it may have been
    /// promoted) once the writer is gone; a host that went down is tried again after a while.
    @Test func hostsWithoutChecksAreProbedByConnectingAndLearnFromLogins() {
        var table = HostTable()
        _ = table.track(all)
        #expect(table.choose(for: .readWrite, among: all, turn: 0) == nil, "checks may still run: wait for them")
        for host in all { table.setLearnsFromServers(host, true) }
        #expect(table.choose(for: .readWrite, among: all, turn: 1) == r1, "an unknown host, in turn")
        #expect(table.roleReported(r1, inRecovery: true) == [.up(r1, role: .replica)])
        #expect(table.choose(for: .readOnly, among: all, turn: 0) == r1)
        #expect(!table.isUsable(r1, for: .readWrite, among: all), "the probe's connection is closed")
        #expect(table.choose(for: .readWrite, among: all, turn: 0) == w, "the unknown ones next")
        _ = table.roleReported(w, inRecovery: false)
        _ = table.roleReported(r2, inRecovery: true)
        #expect(table.writer == w)
        #expect(table.choose(for: .readWrite, among: all, turn: 5) == w)
        // The writer dies; no check will ever say which replica was promoted: the writer pool tries replicas.
        _ = table.markDown(w, reason: "server connection closed by the server", now: 100)
        #expect(table.writer == nil)
        #expect([r1, r2].contains(table.choose(for: .readWrite, among: all, turn: 0)))
        let events = table.roleReported(r2, inRecovery: false)
        #expect(events.contains(.writerChanged(from: w, to: r2)))
        #expect(table.choose(for: .readWrite, among: all, turn: 0) == r2)
        #expect(table.retryDown(before: 50).isEmpty)
        #expect(table.retryDown(before: 200) == [w])
        #expect(table.hosts[w]?.health == .unknown)
    }

    @Test func targetsPickByRoleAndRotate() {
        let table = healthyTable()
        #expect(table.writer == w)
        #expect(table.choose(for: .primary, among: all, turn: 7) == w)
        #expect(Set((0..<4).compactMap { table.choose(for: .standby, among: all, turn: $0) }) == [r1, r2])
        #expect(table.choose(for: .preferStandby, among: [w], turn: 0) == w)
        #expect(table.isUsable(r1, for: .preferStandby, among: all))
        #expect(!table.isUsable(w, for: .preferStandby, among: all))
        #expect(!table.isUsable(r1, for: .readWrite, among: all))
    }

    @Test func failuresMarkDownAfterTheLimitAndConnectionFailuresAtOnce() {
        var table = healthyTable()
        #expect(table.checkFailed(r1, reason: "timeout", limit: 2, now: 2).isEmpty)
        #expect(table.checkFailed(r1, reason: "timeout", limit: 2, now: 3) == [.down(r1, reason: "2 failed health checks, last: timeout")])
        #expect(table.choose(for: .readOnly, among: all, turn: 0) == r2)
        #expect(table.markDown(r2, reason: "connect failed") == [.down(r2, reason: "connect failed")])
        #expect(table.markDown(r2, reason: "again").isEmpty)
        // No replica: prefer-standby falls back to the writer, read-only waits.
        #expect(table.choose(for: .preferStandby, among: all, turn: 0) == w)
        #expect(table.choose(for: .readOnly, among: all, turn: 0) == nil)
        #expect(table.checkSucceeded(r1, inRecovery: true, lag: 0, latency: 0.001, now: 4) == [.up(r1, role: .replica)])
    }

    @Test func aPromotionMovesTheWriterAndTheOldPrimaryNeverComesBackByItself() {
        var table = healthyTable()
        _ = table.markDown(w, reason: "connection refused")
        #expect(table.writer == nil && table.writerLost)
        let events = table.checkSucceeded(r1, inRecovery: false, lag: nil, latency: 0.001, now: 5)
        #expect(events == [.roleChanged(r1, from: .replica, to: .primary), .writerChanged(from: w, to: r1)])
        #expect(table.writer == r1 && table.failovers == 1 && !table.writerLost)
        // The old primary restarts without being demoted: still not the writer.
        _ = table.checkSucceeded(w, inRecovery: false, lag: nil, latency: 0.001, now: 6)
        #expect(table.writer == r1)
        #expect(!table.isUsable(w, for: .readWrite, among: all))
        // The new writer goes down: nobody writes to the old one meanwhile.
        _ = table.markDown(r1, reason: "gone")
        #expect(table.writer == nil)
        #expect(table.choose(for: .readWrite, among: all, turn: 0) == nil)
    }

    @Test func lagTakesAReplicaOutOfRotationAndBack() {
        var table = healthyTable(maxLag: 5)
        #expect(table.checkSucceeded(r1, inRecovery: true, lag: 9, latency: 0.001, now: 2) == [.lagging(r1, lag: 9, limit: 5)])
        #expect(table.choose(for: .readOnly, among: all, turn: 0) == r2)
        #expect(!table.isUsable(r1, for: .readOnly, among: all))
        #expect(table.checkSucceeded(r1, inRecovery: true, lag: 0.2, latency: 0.001, now: 3) == [.caughtUp(r1, lag: 0.2)])
        // A topology source's lag (Aurora) counts the same way.
        #expect(table.lagReported(r2, lag: 6) == [.lagging(r2, lag: 6, limit: 5)])
        #expect(table.choose(for: .readOnly, among: all, turn: 1) == r1)
    }

    @Test func retainForgetsHostsNoLongerNamed() {
        var table = healthyTable()
        table.retain(only: [w])
        #expect(table.hosts.count == 1)
        #expect(table.choose(for: .readOnly, among: all, turn: 0) == nil)
    }
}

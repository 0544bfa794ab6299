import AdminConsole
import Foundation
import NIOCore
import NIOSSL
import Pooling

/// The admin console side of a client connection, and its rows for SHOW CLIENTS.
extension ClientConnection {
    // MARK: Console

    func startConsole(access: AdminSession.Access) {
        guard let context else { return }
        endLoginState()
        let key = runtime.registerCancelKey(for: self)
        cancelKey = key
        state = .console
        let session = AdminSession(access: access, runtime: runtime, client: self, allocator: context.channel.allocator)
        console = session
        runtime.consoleSessions.withLockedValue { $0 += 1 }
        var out = context.channel.allocator.buffer(capacity: 256)
        out.writeAuthenticationOk()
        session.writeWelcome(into: &out, key: key)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// Console output for this client (called on its loop by the session).
    func consoleWrite(_ buffer: ByteBuffer) {
        guard state == .console, let context else { return }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// Ends a console session after a protocol error that PgBouncer answers by disconnecting.
    func consoleClose(reason: String) {
        close(reason: reason)
    }

    /// This client as a SHOW CLIENTS row. Runs on the client's loop.
    func consoleRow(nowWall: Date, nowMono: UInt64) -> ConnectionInfo? {
        let status: String
        switch state {
        case .pooled:
            switch link.phase {
            case .linked: status = "active"
            case .idle: status = "idle"
            case .waitingForServer: status = "waiting"
            }
        case .waitingForWelcome: status = "waiting"
        case .console: status = "active"
        case .startup, .authenticating, .closed: return nil
        }
        let requestAt = queryStartedAt != 0 ? queryStartedAt : nil
        var row = ConnectionInfo(
            type: "C", user: user, database: databaseName, state: status,
            addr: remoteHost, port: remotePort, localAddr: localHost, localPort: localPort,
            connectTime: connectedAtWall,
            requestTime: requestAt.map { nowWall.addingTimeInterval(-Double(nowMono &- $0) / 1e9) } ?? connectedAtWall,
            waitMicros: waitStartedAt != 0 && status == "waiting" ? (nowMono &- waitStartedAt) / 1000 : 0,
            closeNeeded: false, ptr: Self.pointerString(self), link: server.map(Self.pointerString) ?? "",
            remotePid: Int(peerPID), tls: tlsDescription ?? "", applicationName: link.parameters["application_name"] ?? "",
            id: id, poolKey: pool?.key, pinned: link.pinned.names)
        if let replication { row.replication = replication.shown }
        return row
    }

    /// PgBouncer prints the protocol as OpenSSL names it.
    static func describe(_ version: TLSVersion) -> String {
        switch version {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }

    static func pointerString(_ object: AnyObject) -> String {
        "0x" + String(UInt(bitPattern: ObjectIdentifier(object).hashValue), radix: 16)
    }
}

// The linked phase fed raw bytes from both sides — what a broken driver, an attacker, or a confused server could
// send — and the outside events in any order. It must never trap, never hold more of the client's bytes than its
// bounds allow, and never give a server back unless the server's last words were a whole ReadyForQuery saying
// idle (or it said nothing since it was lent), with no cancel out.
import FuzzDriver
import Configuration
import NIOCore
import Pooling
import PostgresWire

struct Input {
    var bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    var done: Bool { index >= bytes.count }
    mutating func byte() -> Int {
        guard index < bytes.count else { return 0 }
        defer { index += 1 }
        return Int(bytes[index])
    }
    mutating func chunk() -> ByteBuffer {
        let length = min(byte(), bytes.count - index)
        defer { index += length }
        return ByteBuffer(bytes: UnsafeBufferPointer(rebasing: bytes[index..<(index + length)]))
    }
}

/// The fuzz target's own reading of the server's stream since it was lent: whether it stands at a message
/// boundary after an idle ReadyForQuery, with only asynchronous messages (notice, parameter status,
/// notification) since.
struct ServerWords {
    var header: [UInt8] = []
    var remaining = 0
    var type: UInt8 = 0
    var status: UInt8 = 0
    var idle = true

    var clean: Bool { idle && header.isEmpty && remaining == 0 }

    mutating func read(_ bytes: ByteBuffer) {
        for byte in bytes.readableBytesView {
            if remaining > 0 {
                remaining -= 1
                if type == UInt8(ascii: "Z") { status = byte }
                if remaining == 0 { finish() }
                continue
            }
            header.append(byte)
            guard header.count == 5 else { continue }
            type = header[0]
            let length = Int(Int32(bitPattern: UInt32(header[1]) << 24 | UInt32(header[2]) << 16 | UInt32(header[3]) << 8 | UInt32(header[4])))
            header = []
            if type != UInt8(ascii: "N") && type != UInt8(ascii: "S") && type != UInt8(ascii: "A") { idle = false }
            remaining = max(length - 4, 0)
            status = 0
            if remaining == 0 { finish() }
        }
    }

    mutating func finish() {
        if type == UInt8(ascii: "Z") { idle = status == UInt8(ascii: "I") }
    }
}

fuzz { bytes in
    var input = Input(bytes: bytes)
    let setup = input.byte()
    let mode: PoolMode = [.transaction, .session, .statement][setup % 3]
    var options = LinkStateMachine.Options(mode: mode, detectsSessionState: setup & 4 != 0, preparedCapacity: setup & 8 != 0 ? 4 : 0)
    options.maxMessageLength = setup & 16 != 0 ? 64 : 1 << 16
    options.queryTimeout = setup & 32 != 0 ? 1 : 0
    options.idleTransactionTimeout = setup & 64 != 0 ? 2 : 0
    options.statementNames = StatementNames()
    if mode == .session { options.resetQueryOnDisconnect = "DISCARD ALL" }
    var machine = LinkStateMachine(options: options, now: 0)
    var now: UInt64 = 0
    var wantsServer = false
    var hasServer = false
    var cancels = 0
    var server = ServerWords()

    func handle(_ action: LinkAction) -> Bool {
        trace("  -> \(action)")
        switch action {
        case .release, .giveBackUnused:
            if case .release = action {
                precondition(server.clean, "released while the server is not idle at a message boundary: \(server)")
                precondition(cancels == 0, "released with a cancel out")
            }
            hasServer = false
            server = ServerWords()
        case .closeServer:
            hasServer = false
            server = ServerWords()
        case .fatal(_, _, let serverReason):
            if serverReason != nil { hasServer = false; server = ServerWords() }
            return false
        default:
            break
        }
        return true
    }

    while !input.done {
        let event = input.byte() % 10
        trace("event \(event) phase \(machine.phase) server \(server)")
        switch event {
        case 0, 1, 2, 3:
            let read: LinkStateMachine.ClientRead
            do {
                read = try machine.clientBytes(input.chunk(), now: now)
            } catch {
                return // the glue answers the frame error and closes the client
            }
            if read.requestServer { wantsServer = true }
        case 4...6 where hasServer:
            let bytes = input.chunk()
            server.read(bytes)
            if !handle(machine.serverBytes(bytes) { input.byte() % 8 != 0 }.action) { return }
        case 7 where wantsServer && !hasServer:
            wantsServer = false
            hasServer = true
            if !handle(machine.serverAssigned(ServerSession()).action) { return }
        case 8:
            switch input.byte() % 4 {
            case 0: if hasServer, machine.cancelForwarded() { cancels += 1 }
            case 1: if cancels > 0 { cancels -= 1; if !handle(machine.cancelFinished()) { return } }
            case 2: if hasServer { hasServer = false; server = ServerWords(); if !handle(machine.serverLost().action) { return } }
            default:
                now += UInt64(input.byte()) * 100_000_000
                if !handle(machine.tick(now: now)) { return }
            }
        case 9:
            _ = handle(machine.clientClosed())
            return
        default:
            break
        }
        precondition(machine.pendingBytes <= (1 << 20) + options.maxMessageLength, "\(machine.pendingBytes) client bytes held")
    }
    return
}

// Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) on any byte stream: the
// decoder never traps, consumes exactly one packet's length or nothing, and a startup packet it accepts keeps
// every parameter it carried.
import FuzzDriver
import NIOCore
import PostgresWire

fuzz { input in
    var buffer = ByteBuffer(bytes: input)
    while true {
        let before = buffer.readerIndex
        let declared = buffer.getInteger(at: before, as: Int32.self)
        let packet: StartupPacket?
        do {
            packet = try StartupPacketDecoder.decode(&buffer)
        } catch {
            return
        }
        guard let packet else {
            precondition(buffer.readerIndex == before, "consumed bytes without a packet")
            return
        }
        precondition(buffer.readerIndex - before == Int(declared!), "consumed \(buffer.readerIndex - before) of \(declared!)")
        if case .startup(_, let parameters) = packet {
            // Re-encoded, the parameters decode to the same list.
            var again = ByteBuffer()
            again.writeInteger(Int32(0))
            again.writeInteger(Int32(196608))
            for (name, value) in parameters { again.writeCString(name); again.writeCString(value) }
            again.writeInteger(UInt8(0))
            again.setInteger(Int32(again.readableBytes), at: 0)
            if again.readableBytes <= StartupPacket.maxLength {
                let decoded = try? StartupPacketDecoder.decode(&again)
                precondition(decoded == .startup(minorVersion: 0, parameters: parameters), "parameters do not round-trip")
            }
        }
    }
}

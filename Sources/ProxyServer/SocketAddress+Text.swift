import NIOCore

extension SocketAddress {
    /// The address as text, like `ipAddress`. IPv4 is formatted here: `ipAddress` calls inet_ntop, which glibc
    /// formats through sprintf, and every accepted connection needs its peer's and its own address as text.
    var hostText: String? {
        if case .v4(let address) = self {
            let raw = UInt32(bigEndian: address.address.sin_addr.s_addr)
            return "\(raw >> 24).\(raw >> 16 & 0xFF).\(raw >> 8 & 0xFF).\(raw & 0xFF)"
        }
        return ipAddress
    }
}

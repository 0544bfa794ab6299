import NIOSSL

/// A failed TLS handshake in words an operator (and PgBouncer's users) know — `certificate verify failed`,
/// `name "db.example" not present in server certificate` — instead of swift-nio-ssl's error description, which
/// carries BoringSSL's error code and the build machine's path of the C source file that raised it. Clients can
/// cause these failures, and the text reaches log lines and, cached, other clients' errors.
enum TLSFailureText {
    /// `host`: the name or address the certificate had to match (swift-nio-ssl does not say which for an IP).
    static func describe(_ error: Error, host: String? = nil) -> String {
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "name \"\(host ?? "?")\" not present in server certificate"
        }
        // BoringSSL's reasons read "…:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /path/file.cc:393".
        let text = String(describing: error)
        let reasons = text.components(separatedBy: "OPENSSL_internal:").dropFirst().compactMap { part -> String? in
            let reason = part.prefix { $0.isUppercase || $0.isNumber || $0 == "_" }
            return reason.isEmpty ? nil : reason.lowercased().replacingOccurrences(of: "_", with: " ")
        }
        if !reasons.isEmpty { return reasons.joined(separator: ", ") }
        if let ssl = error as? NIOSSLError {
            switch ssl {
            case .uncleanShutdown: return "connection closed during the handshake"
            case .handshakeFailed: return "handshake failed"
            default: break
            }
        }
        return "handshake failed"
    }
}

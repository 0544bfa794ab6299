import Configuration
import Foundation
import NIOCore
import NIOSSL
import PostgresWire

/// auth_type = hba and cert: which method a login must pass, decided before any password is asked for.
extension ClientConnection {
    enum HostBasedOutcome {
        /// Authenticate with this auth type.
        case authType(AuthType)
        /// `peer` or `cert` proved who the client is; no password is asked and no lookup made (the server login
        /// uses what the auth file or the entry's forced user gives, as for any user).
        case proven
        /// Refused; the client is being closed.
        case refused
    }

    /// The auth type this login runs under: the configured one, or for `hba` the method of the first rule that
    /// matches. `peer` and `cert` are settled here.
    func hostBasedAuthType(_ snapshot: ConfigSnapshot) -> HostBasedOutcome {
        let method: HBARules.Method
        // Fields read through the snapshot, not a `ShoalConfig` argument: passing it copied the whole configuration.
        switch snapshot.config.authType {
        case .cert:
            method = .cert
        case .hba:
            guard let rules = snapshot.config.hbaRules else {
                fatal("no authentication method is found", code: "28000")
                return .refused
            }
            guard let rule = rules.rule(for: hbaPeer, tls: tlsDescription != nil, database: databaseName, user: user) else {
                logger.info("no hba rule matches: db=\(databaseName) user=\(user)")
                fatal("no authentication method is found", code: "28000")
                return .refused
            }
            method = rule.method
        default:
            return .authType(snapshot.config.authType)
        }
        switch method {
        case .trust: return .authType(.trust)
        case .md5: return .authType(.md5)
        case .password: return .authType(.plain)
        case .scramSHA256: return .authType(.scramSHA256)
        case .reject:
            fatal("login rejected", code: "28000")
            return .refused
        case .peer:
            guard isUnixSocket, let peerUID, Self.userName(uid: peerUID) == user else {
                fatal("unix socket login rejected", code: "28000")
                return .refused
            }
            return .proven
        case .cert:
            guard let name = verifiedCertificateName(), name == user else {
                fatal("certificate authentication failed", code: "28000")
                return .refused
            }
            return .proven
        }
    }

    /// The client's address as the rules see it.
    var hbaPeer: HBARules.Peer {
        switch context?.channel.remoteAddress {
        case .v4(let address)?:
            return .inet(withUnsafeBytes(of: address.address.sin_addr) { Array($0) })
        case .v6(let address)?:
            return .inet(withUnsafeBytes(of: address.address.sin6_addr) { Array($0) })
        default:
            return .unixSocket
        }
    }

    /// The common name of the client certificate the TLS handshake verified (client_tls_sslmode verify-ca or
    /// verify-full make it required and checked against client_tls_ca_file); nil without one.
    func verifiedCertificateName() -> String? {
        guard tlsDescription != nil, runtime.snapshot.config.clientTLSSSLMode.hasPrefix("verify"),
              let handler = try? context?.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
              let der = try? handler.peerCertificate?.toDERBytes() else { return nil }
        return CertificateSubject.commonName(der: der)
    }

    /// The account name of a Unix user id (peer authentication), through the system's user database.
    static func userName(uid: UInt32) -> String? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil, let name = entry.pw_name else { return nil }
        return String(cString: name)
    }
}

import Foundation
import Configuration
import NIOSSL

/// The TLS contexts one config asks for, built once per load or reload (they read certificate files) and then
/// shared by every connection: one to terminate clients' TLS, one per server-side mode to originate it.
struct TLSContexts: @unchecked Sendable {
    /// Shoal as a TLS server for clients; nil when client_tls_sslmode is disable.
    let forClients: NIOSSLContext?
    /// Shoal as a TLS client towards PostgreSQL; nil when server_tls_sslmode is disable or allow.
    let forServers: NIOSSLContext?
    let serverMode: String

    static let none = TLSContexts(forClients: nil, forServers: nil, serverMode: "disable")

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func build(_ config: ShoalConfig) throws(Failure) -> TLSContexts {
        // A missing file is named with its key (BoringSSL's own error would only say "no such file").
        var files: [(String, String?)] = []
        if config.clientTLSSSLMode != "disable" {
            files += [("client_tls_cert_file", config.clientTLSCertFile), ("client_tls_key_file", config.clientTLSKeyFile),
                      ("client_tls_ca_file", config.clientTLSCAFile)]
        }
        if config.serverTLSSSLMode != "disable" {
            files += [("server_tls_ca_file", config.serverTLSCAFile), ("server_tls_cert_file", config.serverTLSCertFile),
                      ("server_tls_key_file", config.serverTLSKeyFile)]
        }
        for case let (key, path?) in files where !FileManager.default.isReadableFile(atPath: path) {
            throw Failure(description: "\(key) \(path): cannot read")
        }
        var forClients: NIOSSLContext?
        if config.clientTLSSSLMode != "disable" {
            guard let certFile = config.clientTLSCertFile, let keyFile = config.clientTLSKeyFile else {
                throw Failure(description: "client_tls_sslmode = \(config.clientTLSSSLMode) needs client_tls_cert_file and client_tls_key_file")
            }
            forClients = try context("client_tls") {
                let chain = try NIOSSLCertificate.fromPEMFile(certFile).map { NIOSSLCertificateSource.certificate($0) }
                let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
                var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
                try apply(protocols: config.clientTLSProtocols, ciphers: config.clientTLSCiphers, to: &tls)
                if config.clientTLSSSLMode == "verify-ca" || config.clientTLSSSLMode == "verify-full" {
                    // A client certificate is required and must chain to client_tls_ca_file.
                    guard let caFile = config.clientTLSCAFile else {
                        throw Failure(description: "client_tls_sslmode = \(config.clientTLSSSLMode) needs client_tls_ca_file")
                    }
                    tls.certificateVerification = .noHostnameVerification
                    tls.trustRoots = .file(caFile)
                    tls.sendCANameList = true
                }
                return try NIOSSLContext(configuration: tls)
            }
        }
        var forServers: NIOSSLContext?
        if ["prefer", "require", "verify-ca", "verify-full"].contains(config.serverTLSSSLMode) {
            forServers = try context("server_tls") {
                var tls = TLSConfiguration.makeClientConfiguration()
                try apply(protocols: config.serverTLSProtocols, ciphers: config.serverTLSCiphers, to: &tls)
                switch config.serverTLSSSLMode {
                case "verify-full": tls.certificateVerification = .fullVerification
                case "verify-ca": tls.certificateVerification = .noHostnameVerification
                default: tls.certificateVerification = .none // prefer / require: encryption without authentication, as libpq
                }
                if let caFile = config.serverTLSCAFile { tls.trustRoots = .file(caFile) }
                if let certFile = config.serverTLSCertFile, let keyFile = config.serverTLSKeyFile {
                    tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certFile).map { .certificate($0) }
                    tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
                }
                return try NIOSSLContext(configuration: tls)
            }
        }
        return TLSContexts(forClients: forClients, forServers: forServers, serverMode: config.serverTLSSSLMode)
    }

    private static func context(_ side: String, _ body: () throws -> NIOSSLContext) throws(Failure) -> NIOSSLContext {
        do {
            return try body()
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(description: "\(side): \(error)")
        }
    }

    /// PgBouncer's protocol names (`secure` = TLS 1.2 and 1.3, `all` or `legacy` = 1.0 to 1.3) as a version range;
    /// a cipher list other than PgBouncer's keywords goes to BoringSSL as it is (it covers TLS 1.2 and below).
    private static func apply(protocols: [String], ciphers: String, to tls: inout TLSConfiguration) throws {
        var versions: [TLSVersion] = []
        for name in protocols {
            switch name {
            case "secure": versions += [.tlsv12, .tlsv13]
            case "all", "legacy": versions += [.tlsv1, .tlsv11, .tlsv12, .tlsv13]
            case "tlsv1.0": versions.append(.tlsv1)
            case "tlsv1.1": versions.append(.tlsv11)
            case "tlsv1.2": versions.append(.tlsv12)
            case "tlsv1.3": versions.append(.tlsv13)
            default: break
            }
        }
        let order: [TLSVersion] = [.tlsv1, .tlsv11, .tlsv12, .tlsv13]
        let chosen = order.filter(versions.contains)
        if let low = chosen.first, let high = chosen.last {
            tls.minimumTLSVersion = low
            tls.maximumTLSVersion = high
        }
        if !["default", "secure", "fast", "normal", "all", "legacy"].contains(ciphers.lowercased()) {
            tls.cipherSuites = ciphers
        }
    }
}

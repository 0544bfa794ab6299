import Foundation

/// A throwaway CA and the certificates the TLS tests need, made with Debian's openssl:
/// - `server`: localhost and 127.0.0.1 (PostgreSQL's and Shoal's certificate),
/// - `wrong`: only `wrong.example` (a server whose certificate names another host),
/// - `client`: CN=postgres (a client certificate).
final class TestCertificates: @unchecked Sendable {
    static let shared: TestCertificates = {
        do { return try TestCertificates() } catch { fatalError("could not make test certificates: \(error)") }
    }()

    let directory: String
    var caFile: String { "\(directory)/ca.crt" }
    func certFile(_ name: String) -> String { "\(directory)/\(name).crt" }
    func keyFile(_ name: String) -> String { "\(directory)/\(name).key" }

    private init() throws {
        directory = "/tmp/shoal-test-certs-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Shoal Test CA",
                     "-keyout", "\(directory)/ca.key", "-out", caFile])
        try issue("server", subject: "/CN=localhost", alternativeNames: "DNS:localhost,IP:127.0.0.1")
        try issue("wrong", subject: "/CN=wrong.example", alternativeNames: "DNS:wrong.example")
        try issue("client", subject: "/CN=postgres", alternativeNames: nil)
        // PostgreSQL refuses a key that others can read.
        for name in ["server", "wrong", "client"] { chmod(keyFile(name), 0o600) }
        atexit { try? FileManager.default.removeItem(atPath: TestCertificates.shared.directory) }
    }

    private func issue(_ name: String, subject: String, alternativeNames: String?) throws {
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", keyFile(name), "-out", "\(directory)/\(name).csr"])
        var arguments = ["x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", caFile, "-CAkey", "\(directory)/ca.key",
                         "-CAcreateserial", "-days", "2", "-out", certFile(name)]
        if let alternativeNames {
            let extensions = "\(directory)/\(name).ext"
            try "subjectAltName=\(alternativeNames)\n".write(toFile: extensions, atomically: true, encoding: .utf8)
            arguments += ["-extfile", extensions]
        }
        try openssl(arguments)
    }

    private func openssl(_ arguments: [String]) throws {
        let result = try ProcessRunner.run("openssl", arguments)
        guard result.status == 0 else { throw TestFailure("openssl \(arguments.first ?? "") failed: \(result.stderr)") }
    }

    /// Copies a certificate and key where the `postgres` account can read them (a server's ssl_cert_file).
    func install(_ name: String, into directory: String) throws {
        try FileManager.default.copyItem(atPath: certFile(name), toPath: "\(directory)/server.crt")
        try FileManager.default.copyItem(atPath: keyFile(name), toPath: "\(directory)/server.key")
        chmod("\(directory)/server.key", 0o600)
    }
}

/// A PostgreSQL that takes TLS connections only (hostssl), on 127.0.0.1 and 127.0.0.2, with the `server`
/// certificate (valid for localhost and 127.0.0.1 — not for 127.0.0.2).
enum TLSPostgres {
    static let shared: TestPostgres = {
        do {
            let certificates = TestCertificates.shared
            return try TestPostgres(
                name: "tls",
                settings: ["listen_addresses=127.0.0.1,127.0.0.2", "ssl=on", "ssl_cert_file=../server.crt", "ssl_key_file=../server.key"],
                hba: "local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n",
                prepare: { directory in try certificates.install("server", into: directory) })
        } catch {
            fatalError("could not start the TLS test PostgreSQL: \(error)")
        }
    }()
}

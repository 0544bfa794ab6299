import Configuration
import Foundation
import ProxyServer

/// `shoal --check FILE`: reads the config and the auth file as a start would, prints what would be served,
/// and exits 0, or prints each problem with its file, line and key and exits 1 — for CI, Helm charts and
/// Kubernetes init containers.
enum ConfigCheck {
    static func run(path: String) -> Int32 {
        let result: ConfigLoader.Result
        do {
            result = try ConfigLoader().load(path: path)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            return 1
        }
        for warning in result.warnings { FileHandle.standardError.write(Data("\(warning)\n".utf8)) }
        let config = result.config
        var problems: [String] = []
        var users = 0
        if let authFile = config.authFile {
            if let text = try? String(contentsOfFile: authFile, encoding: .utf8) {
                let parsed = UserList.parse(text, file: authFile)
                users = parsed.userList.secrets.count
                if let problem = parsed.problem { problems.append("\(problem)") }
            } else {
                problems.append("\(authFile): cannot read auth_file")
            }
        }
        problems += ShoalServer.checkTLS(config)
        let listen = (config.listenAddr.isEmpty ? [] : config.listenAddr.map { "\($0):\(config.listenPort)" })
            + (config.unixSocketDir.isEmpty ? [] : ["unix:\(config.unixSocketDir)/.s.PGSQL.\(config.listenPort)"])
        print("config \(path): ok")
        let readonly = config.readonlyListenPort > 0 ? " (read-only route on port \(config.readonlyListenPort))" : ""
        print("listen: \(listen.joined(separator: ", "))\(readonly)\(config.metricsPort > 0 ? "; metrics on \(config.metricsAddr):\(config.metricsPort)" : "")")
        print("pool_mode \(config.poolMode.rawValue), default_pool_size \(config.defaultPoolSize), max_client_conn \(config.maxClientConn), auth_type \(config.authType.rawValue)")
        for name in config.databases.keys.sorted() {
            let entry = config.databases[name]!
            let host = entry.hosts.isEmpty ? "unix:\(config.unixSocketDir)" : entry.hosts.joined(separator: ",")
            print("database \(name): \(host):\(entry.ports.map(String.init).joined(separator: ",")) dbname=\(entry.dbname ?? name)"
                  + (entry.poolSize.map { " pool_size=\($0)" } ?? "") + (entry.poolMode.map { " pool_mode=\($0.rawValue)" } ?? "")
                  + (entry.targetSessionAttrs.map { " target_session_attrs=\($0.rawValue)" } ?? "")
                  + ((entry.auroraTopology ?? config.auroraTopology) ? " aurora_topology (instances \(auroraPattern(entry, config)))" : ""))
        }
        print("auth_file: \(config.authFile ?? "(none)") with \(users) users; TLS to clients \(config.clientTLSSSLMode), to servers \(config.serverTLSSSLMode)")
        for problem in problems { FileHandle.standardError.write(Data("\(problem)\n".utf8)) }
        return problems.isEmpty ? 0 : 1
    }

    /// How an Aurora entry's instances will be named (the configured pattern, or derived from its endpoint).
    static func auroraPattern(_ entry: DatabaseEntry, _ config: ShoalConfig) -> String {
        if !config.auroraInstanceHostPattern.isEmpty { return config.auroraInstanceHostPattern }
        return entry.hosts.first.flatMap(AuroraEndpoints.instancePattern(forClusterHost:)) ?? "? (set aurora_instance_host_pattern)"
    }
}

/// Builds a `ShoalConfig` from pgbouncer.ini the way PgBouncer reads it: the last value of a repeated key wins,
/// a bad value stops the load with file, line and key; a PgBouncer key Shoal does not act on yet is a warning.
public struct ConfigLoader {
    public var reader: IniReader

    public init(reader: IniReader = IniReader()) { self.reader = reader }

    public struct Result: Sendable {
        public var config: ShoalConfig
        public var warnings: [ConfigDiagnostic]
    }

    public func load(path: String) throws(ConfigDiagnostic) -> Result {
        let entries = try reader.read(path: path)
        var config = ShoalConfig()
        config.configFile = path
        var warnings: [ConfigDiagnostic] = []
        var sawMain = false
        for entry in entries {
            switch entry.section {
            case "pgbouncer":
                sawMain = true
                try Self.apply(entry, to: &config, warnings: &warnings)
            case "databases":
                guard entry.key != "pgbouncer" else {
                    throw ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, "database name \"pgbouncer\" is reserved")
                }
                do {
                    var database = try DatabaseEntry.parse(name: entry.key, value: entry.value)
                    database.file = entry.file
                    database.line = entry.line
                    config.databases[entry.key] = database
                } catch {
                    throw ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, error.message)
                }
            case "users":
                do {
                    config.users[entry.key] = try UserEntry.parse(name: entry.key, value: entry.value)
                } catch {
                    throw ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, error.message)
                }
            case "peers":
                let peer = try Self.peer(entry)
                config.peers[peer.id] = peer
            default:
                throw ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, "key outside of any section")
            }
        }
        guard sawMain else {
            throw ConfigDiagnostic(.error, file: path, line: 0, "load_init_file: main section missing from config file")
        }
        try Self.checkAuthentication(&config, file: path, warnings: &warnings, read: reader.fileLoader)
        return Result(config: config, warnings: warnings)
    }

    // MARK: [pgbouncer] keys

    private enum Kind {
        case int(WritableKeyPath<ShoalConfig, Int>)
        /// An integer that must not be negative (a count).
        case count(WritableKeyPath<ShoalConfig, Int>)
        case bool(WritableKeyPath<ShoalConfig, Bool>)
        case seconds(WritableKeyPath<ShoalConfig, Double>)
        case string(WritableKeyPath<ShoalConfig, String>)
        case optionalString(WritableKeyPath<ShoalConfig, String?>)
        case list(WritableKeyPath<ShoalConfig, [String]>)
        case poolMode
        case authType
        case sslmode(WritableKeyPath<ShoalConfig, String>)
        case logFormat
        /// A Shoal key that reads like PostgreSQL's booleans: on/off, true/false, yes/no, 1/0.
        case `switch`(WritableKeyPath<ShoalConfig, Bool>)
        case tlsProtocols(WritableKeyPath<ShoalConfig, [String]>)
        /// peer_id: 0 (off) to 16383, as PgBouncer documents it.
        case peerID
        /// scram_iterations: 1 or more (and no more than Shoal asks of a server, so a login stays cheap).
        case iterations
        /// Permission bits, written in octal (`0700`).
        case mode(WritableKeyPath<ShoalConfig, Int>)
        /// pkt_buf: bytes, at least 512 (a login and a short statement still take one read each).
        case packetBuffer
        /// An integer in a range (a TCP port, listen_backlog): beyond it the value used to trap where it was
        /// narrowed at start-up, instead of being refused with its line.
        case ranged(WritableKeyPath<ShoalConfig, Int>, ClosedRange<Int>)
        /// A PgBouncer key that Shoal accepts but does not act on yet.
        case unsupported
    }

    // Immutable after initialisation; key paths are not Sendable, hence the annotation.
    nonisolated(unsafe) private static let keys: [String: Kind] = [
        "listen_addr": .list(\.listenAddr), "listen_port": .ranged(\.listenPort, 0...65535), "unix_socket_dir": .string(\.unixSocketDir),
        "listen_backlog": .ranged(\.listenBacklog, 0...Int(Int32.max)), "pkt_buf": .packetBuffer,
        "auth_type": .authType, "auth_file": .optionalString(\.authFile), "auth_hba_file": .optionalString(\.authHbaFile),
        "auth_user": .optionalString(\.authUser),
        "auth_query": .string(\.authQuery), "auth_dbname": .optionalString(\.authDbname),
        "auth_query_cache_ttl": .seconds(\.authQueryCacheTTL), "auth_query_negative_cache_ttl": .seconds(\.authQueryNegativeCacheTTL),
        "admin_users": .list(\.adminUsers), "stats_users": .list(\.statsUsers),
        "pool_mode": .poolMode, "max_client_conn": .int(\.maxClientConn), "default_pool_size": .int(\.defaultPoolSize),
        "min_pool_size": .int(\.minPoolSize), "reserve_pool_size": .int(\.reservePoolSize),
        "reserve_pool_timeout": .seconds(\.reservePoolTimeout), "max_db_connections": .int(\.maxDbConnections),
        "max_user_connections": .int(\.maxUserConnections), "max_db_client_connections": .int(\.maxDbClientConnections),
        "max_user_client_connections": .int(\.maxUserClientConnections),
        "server_reset_query": .string(\.serverResetQuery), "server_reset_query_always": .bool(\.serverResetQueryAlways),
        "server_check_query": .string(\.serverCheckQuery), "server_check_delay": .seconds(\.serverCheckDelay),
        "server_lifetime": .seconds(\.serverLifetime), "server_idle_timeout": .seconds(\.serverIdleTimeout),
        "server_connect_timeout": .seconds(\.serverConnectTimeout), "server_login_retry": .seconds(\.serverLoginRetry),
        "server_round_robin": .bool(\.serverRoundRobin),
        "client_login_timeout": .seconds(\.clientLoginTimeout), "query_timeout": .seconds(\.queryTimeout),
        "query_wait_timeout": .seconds(\.queryWaitTimeout), "client_idle_timeout": .seconds(\.clientIdleTimeout),
        "idle_transaction_timeout": .seconds(\.idleTransactionTimeout), "transaction_timeout": .seconds(\.transactionTimeout),
        "ignore_startup_parameters": .list(\.ignoreStartupParameters),
        "track_extra_parameters": .list(\.trackExtraParameters),
        "max_packet_size": .int(\.maxPacketSize), "application_name_add_host": .bool(\.applicationNameAddHost),
        "cancel_wait_timeout": .seconds(\.cancelWaitTimeout), "autodb_idle_timeout": .seconds(\.autodbIdleTimeout),
        "pool_idle_timeout": .seconds(\.poolIdleTimeout), "server_fast_close": .bool(\.serverFastClose),
        "tcp_defer_accept": .bool(\.tcpDeferAccept), "disable_pqexec": .bool(\.disablePqexec),
        // Linux's own bounds (0 leaves the kernel's default): a value past them made the setsockopt fail.
        "tcp_keepalive": .bool(\.tcpKeepalive), "tcp_keepidle": .ranged(\.tcpKeepidle, 0...32767),
        "tcp_keepintvl": .ranged(\.tcpKeepintvl, 0...32767), "tcp_keepcnt": .ranged(\.tcpKeepcnt, 0...127),
        "tcp_user_timeout": .ranged(\.tcpUserTimeout, 0...Int(Int32.max)),
        "tcp_socket_buffer": .ranged(\.tcpSocketBuffer, 0...Int(Int32.max / 2)),
        "logfile": .optionalString(\.logfile), "pidfile": .optionalString(\.pidfile),
        "log_connections": .bool(\.logConnections), "log_disconnections": .bool(\.logDisconnections),
        "log_pooler_errors": .bool(\.logPoolerErrors), "log_stats": .bool(\.logStats), "stats_period": .int(\.statsPeriod),
        "verbose": .int(\.verbose),
        "server_tls_sslmode": .sslmode(\.serverTLSSSLMode), "client_tls_sslmode": .sslmode(\.clientTLSSSLMode),
        "server_tls_ca_file": .optionalString(\.serverTLSCAFile), "server_tls_cert_file": .optionalString(\.serverTLSCertFile),
        "server_tls_key_file": .optionalString(\.serverTLSKeyFile), "server_tls_protocols": .tlsProtocols(\.serverTLSProtocols),
        "server_tls_ciphers": .string(\.serverTLSCiphers),
        "client_tls_ca_file": .optionalString(\.clientTLSCAFile), "client_tls_cert_file": .optionalString(\.clientTLSCertFile),
        "client_tls_key_file": .optionalString(\.clientTLSKeyFile), "client_tls_protocols": .tlsProtocols(\.clientTLSProtocols),
        "client_tls_ciphers": .string(\.clientTLSCiphers),
        // Shoal's own.
        "metrics_addr": .string(\.metricsAddr), "metrics_port": .ranged(\.metricsPort, 0...65535), "log_format": .logFormat,
        "pin_session_state": .switch(\.pinSessionState), "max_prepared_statements": .int(\.maxPreparedStatements),
        "max_client_prepared_statements": .count(\.maxClientPreparedStatements), "max_pinned_clients": .int(\.maxPinnedClients),
        "pin_warn_timeout": .seconds(\.pinWarnTimeout), "worker_threads": .count(\.workerThreads),
        "cross_thread_reuse_delay": .seconds(\.crossThreadReuseDelay),
        "so_reuseport": .bool(\.soReuseport),
        "readonly_listen_port": .ranged(\.readonlyListenPort, 0...65535), "health_check_period": .seconds(\.healthCheckPeriod),
        "health_check_timeout": .seconds(\.healthCheckTimeout), "health_check_failures": .int(\.healthCheckFailures),
        "health_check_user": .optionalString(\.healthCheckUser), "max_replica_lag": .seconds(\.maxReplicaLag),
        "max_host_connections": .int(\.maxHostConnections), "aurora_topology": .switch(\.auroraTopology),
        "aurora_instance_host_pattern": .string(\.auroraInstanceHostPattern),
        "unix_socket_mode": .mode(\.unixSocketMode), "unix_socket_group": .string(\.unixSocketGroup),
        "login_notify_message": .string(\.loginNotifyMessage), "query_wait_notify": .count(\.queryWaitNotify),
        "scram_iterations": .iterations,
        "peer_id": .peerID, "peers_dns": .string(\.peersDNS),
        "max_pending_logins_per_address": .count(\.maxPendingLoginsPerAddress),
        "max_failed_logins_per_minute": .count(\.maxFailedLoginsPerMinute),
        // Known to PgBouncer, accepted, not acted on yet.
        "client_tls13_ciphers": .unsupported,
        "client_tls_dheparams": .unsupported, "client_tls_ecdhcurve": .unsupported,
        "conffile": .unsupported, "dns_max_ttl": .unsupported, "dns_nxdomain_ttl": .unsupported,
        "dns_zone_check_period": .unsupported, "job_name": .unsupported,
        "resolv_conf": .unsupported, "sbuf_loopcnt": .unsupported,
        "server_tls13_ciphers": .unsupported,
        "stats_users_prefix": .unsupported, "suspend_timeout": .unsupported,
        "syslog": .unsupported, "syslog_facility": .unsupported, "syslog_ident": .unsupported,
        "user": .unsupported, "auth_ident_file": .unsupported, "auth_ldap_options": .unsupported,
    ]

    static func apply(_ entry: IniEntry, to config: inout ShoalConfig, warnings: inout [ConfigDiagnostic]) throws(ConfigDiagnostic) {
        func bad(_ expected: String) -> ConfigDiagnostic {
            ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, "invalid value \"\(entry.value)\" for parameter \(entry.key): expected \(expected)")
        }
        guard let kind = keys[entry.key] else {
            throw ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, "unknown parameter: pgbouncer/\(entry.key)")
        }
        let value = entry.value
        switch kind {
        case .int(let path):
            guard let number = parseInteger(value) else { throw bad("an integer") }
            config[keyPath: path] = number
        case .count(let path):
            guard let number = parseInteger(value), number >= 0 else { throw bad("an integer of 0 or more") }
            config[keyPath: path] = number
        case .bool(let path):
            // PgBouncer takes integers only: 0 is false, anything else true.
            guard let number = parseInteger(value) else { throw bad("0 or 1") }
            config[keyPath: path] = number != 0
        case .seconds(let path):
            // Bounded so that every use (nanoseconds in a UInt64, milliseconds in an Int64) stays in range: a
            // larger value would trap at the conversion, long after the file was accepted.
            guard let seconds = Double(value), seconds >= 0, seconds <= Self.maxSeconds else {
                throw bad("a number of seconds up to \(Int(Self.maxSeconds))")
            }
            config[keyPath: path] = seconds
        case .string(let path):
            config[keyPath: path] = value
        case .ranged(let path, let range):
            guard let number = parseInteger(value), range.contains(number) else {
                throw bad("an integer from \(range.lowerBound) to \(range.upperBound)")
            }
            config[keyPath: path] = number
        case .packetBuffer:
            guard let bytes = parseInteger(value), bytes >= 512, bytes <= 1 << 24 else { throw bad("a number of bytes from 512 to 16777216") }
            config.pktBuf = bytes
        case .optionalString(let path):
            config[keyPath: path] = value.isEmpty ? nil : value
        case .list(let path):
            config[keyPath: path] = value.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\t" }).map(String.init)
        case .poolMode:
            guard let mode = PoolMode(rawValue: value.lowercased()) else { throw bad("session, transaction or statement") }
            config.poolMode = mode
        case .authType:
            guard let type = AuthType(rawValue: value.lowercased()) else {
                throw bad("any, trust, plain, md5, cert, hba or scram-sha-256")
            }
            config.authType = type
        case .sslmode(let path):
            let modes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
            guard modes.contains(value.lowercased()) else { throw bad(modes.joined(separator: ", ")) }
            config[keyPath: path] = value.lowercased()
        case .tlsProtocols(let path):
            let names = value.lowercased().split(whereSeparator: { $0 == "," || $0 == " " || $0 == ":" }).map(String.init)
            let known: Set<String> = ["tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3", "all", "secure", "legacy"]
            guard !names.isEmpty, names.allSatisfy(known.contains) else { throw bad("tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3, all, secure or legacy") }
            config[keyPath: path] = names
        case .switch(let path):
            switch value.lowercased() {
            case "on", "true", "yes", "1": config[keyPath: path] = true
            case "off", "false", "no", "0": config[keyPath: path] = false
            default: throw bad("on or off")
            }
        case .logFormat:
            guard ["text", "json"].contains(value.lowercased()) else { throw bad("text or json") }
            config.logFormat = value.lowercased()
        case .iterations:
            guard let rounds = parseInteger(value), (1...100_000).contains(rounds) else { throw bad("a number of PBKDF2 rounds from 1 to 100000") }
            config.scramIterations = rounds
        case .peerID:
            guard let id = parseInteger(value), (0...16383).contains(id) else { throw bad("a peer id from 0 (off) to 16383") }
            config.peerID = id
        case .mode(let path):
            guard let bits = Int(value, radix: 8), (0...0o7777).contains(bits) else { throw bad("permission bits in octal, e.g. 0700") }
            config[keyPath: path] = bits
        case .unsupported:
            config.unsupportedSettings[entry.key] = value
            warnings.append(ConfigDiagnostic(.warning, file: entry.file, line: entry.line, key: entry.key, "parameter \(entry.key) is not supported by Shoal yet; ignored"))
        }
    }

    /// A `[peers]` line, with PgBouncer's refusals.
    static func peer(_ entry: IniEntry) throws(ConfigDiagnostic) -> PeerEntry {
        func refuse(_ message: String) -> ConfigDiagnostic { ConfigDiagnostic(.error, file: entry.file, line: entry.line, key: entry.key, message) }
        guard let id = Int(entry.key), (1...65535).contains(id) else {
            throw refuse("ids of peers must be a number larger than 0 and at most 65536")
        }
        let pairs: [(String, String)]
        do { pairs = try ConnectionString.parse(entry.value) } catch { throw refuse(error.message) }
        guard let host = pairs.last(where: { $0.0 == "host" })?.1, !host.isEmpty else { throw refuse("host was not provided for peer \(id)") }
        var peer = PeerEntry(id: id, host: host)
        for (key, value) in pairs {
            switch key {
            case "host": break
            case "port":
                guard let port = Int(value), (1...65535).contains(port) else { throw refuse("invalid port \"\(value)\" for peer \(id)") }
                peer.port = port
            case "pool_size":
                guard let size = Int(value) else { throw refuse("invalid pool_size \"\(value)\" for peer \(id)") }
                peer.poolSize = size
            default:
                throw refuse("unrecognized peer parameter: \(key)")
            }
        }
        return peer
    }

    // MARK: Live settings (SHOW CONFIG, SET)

    /// The largest number of seconds a key takes: about 31 years.
    static let maxSeconds = 1_000_000_000.0

    /// Keys that only a restart changes (PgBouncer's `changeable = no`, plus Shoal's listeners for metrics).
    public static let restartOnlyKeys: Set<String> = [
        "disable_pqexec", "job_name", "listen_addr", "listen_backlog", "listen_port", "pidfile", "pkt_buf", "resolv_conf",
        "so_reuseport", "track_extra_parameters", "peers_dns", "unix_socket_dir", "unix_socket_group", "unix_socket_mode", "user",
        "metrics_addr", "metrics_port", "readonly_listen_port", "worker_threads", "tcp_defer_accept",
    ]

    public struct Setting: Sendable, Equatable {
        public var key: String
        public var value: String?
        public var defaultValue: String?
        public var changeable: Bool
    }

    /// Every [pgbouncer] key with its current and default value, sorted by key as SHOW CONFIG lists them.
    public static func settings(of config: ShoalConfig) -> [Setting] {
        let defaults = ShoalConfig()
        return keys.keys.sorted().map { key in
            Setting(key: key, value: render(key, config), defaultValue: render(key, defaults),
                    changeable: !restartOnlyKeys.contains(key) && !isUnsupported(key))
        }
    }

    /// The console's SET: applies one key to `config` as a config file line would, if it can change live.
    public static func set(_ key: String, to value: String, in config: inout ShoalConfig) throws(ConfigDiagnostic) {
        let key = key.lowercased()
        guard keys[key] != nil, !restartOnlyKeys.contains(key) else {
            throw ConfigDiagnostic(.error, file: "SET", line: 0, key: key, "parameter \(key) cannot be changed online")
        }
        // A key Shoal does not act on is never "set": start-up only accepts it with a warning naming file and line.
        guard !isUnsupported(key) else {
            throw ConfigDiagnostic(.error, file: "SET", line: 0, key: key, "parameter \(key) is not supported by Shoal")
        }
        var warnings: [ConfigDiagnostic] = []
        var changed = config
        try apply(IniEntry(section: "pgbouncer", key: key, value: value, file: "SET", line: 0), to: &changed, warnings: &warnings)
        if key.hasPrefix("auth_") || key.hasPrefix("client_tls") { try checkAuthentication(&changed, file: "SET", warnings: &warnings) }
        config = changed
    }

    /// What auth_type needs, checked wherever a config is read — start-up, RELOAD/SIGHUP, SET, --check — so a
    /// config Shoal would refuse at start-up is refused everywhere, and the running one kept: `hba` reads its rules
    /// here (a missing or bad file is refused, never run as "no rules"), `cert` needs verified client certificates.
    static func checkAuthentication(_ config: inout ShoalConfig, file: String, warnings: inout [ConfigDiagnostic],
                                    read: @escaping IniReader.FileLoader = { try String(contentsOfFile: $0, encoding: .utf8) }) throws(ConfigDiagnostic) {
        let verifiesClients = config.clientTLSSSLMode == "verify-ca" || config.clientTLSSSLMode == "verify-full"
        switch config.authType {
        case .hba:
            guard let path = config.authHbaFile else {
                throw ConfigDiagnostic(.error, file: file, line: 0, key: "auth_type", "auth_type = hba needs auth_hba_file")
            }
            let rules = try HBARules.load(path: path, read: read)
            if !verifiesClients, let rule = rules.rules.first(where: { $0.method == .cert }) {
                warnings.append(ConfigDiagnostic(.warning, file: rule.file, line: rule.line, key: "auth_hba_file",
                                                 "cert rules need client_tls_sslmode = verify-ca or verify-full; logins they match will fail"))
            }
            config.hbaRules = rules
        case .cert:
            guard verifiesClients else {
                throw ConfigDiagnostic(.error, file: file, line: 0, key: "auth_type",
                                       "auth_type = cert needs client_tls_sslmode = verify-ca or verify-full (a client certificate Shoal verifies)")
            }
            config.hbaRules = nil
        default:
            config.hbaRules = nil
        }
    }

    private static func render(_ key: String, _ config: ShoalConfig) -> String? {
        guard let kind = keys[key] else { return nil }
        switch kind {
        case .int(let path), .count(let path), .ranged(let path, _): return String(config[keyPath: path])
        case .bool(let path): return config[keyPath: path] ? "1" : "0"
        case .seconds(let path):
            let seconds = config[keyPath: path]
            return seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
        case .string(let path): return config[keyPath: path]
        case .optionalString(let path): return config[keyPath: path]
        case .list(let path): return config[keyPath: path].joined(separator: ",")
        case .poolMode: return config.poolMode.rawValue
        case .authType: return config.authType.rawValue
        case .sslmode(let path): return config[keyPath: path]
        case .logFormat: return config.logFormat
        case .switch(let path): return config[keyPath: path] ? "on" : "off"
        case .tlsProtocols(let path): return config[keyPath: path].joined(separator: ",")
        case .mode(let path): return "0" + String(config[keyPath: path], radix: 8)
        case .peerID: return String(config.peerID)
        case .iterations: return String(config.scramIterations)
        case .packetBuffer: return String(config.pktBuf)
        // Shown as what it is: a value read and ignored, never as a setting in force.
        case .unsupported: return config.unsupportedSettings[key].map { "\($0) (ignored: not supported by Shoal)" }
        }
    }

    private static func isUnsupported(_ key: String) -> Bool {
        if case .unsupported? = keys[key] { return true }
        return false
    }

    /// strtol(…, 0): decimal, 0x hex, leading-0 octal.
    static func parseInteger(_ text: String) -> Int? {
        var text = Substring(text)
        var negative = false
        if text.first == "-" { negative = true; text = text.dropFirst() } else if text.first == "+" { text = text.dropFirst() }
        let value: Int?
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            value = Int(text.dropFirst(2), radix: 16)
        } else if text.count > 1 && text.hasPrefix("0") {
            value = Int(text.dropFirst(), radix: 8)
        } else {
            value = Int(text)
        }
        guard let value else { return nil }
        return negative ? -value : value
    }
}

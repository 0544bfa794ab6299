import Configuration
import Foundation
import Logging
import NIOCore
import NIOPosix
import AdminConsole
import ProxyServer

let version = "0.2.0"
let programName = "shoal"

let options: CommandLineOptions
do {
    options = try CommandLineOptions.parse(Array(CommandLine.arguments.dropFirst()))
} catch .noConfigFile {
    FileHandle.standardError.write(Data("\(programName): no configuration file specified\nTry \"\(programName) --help\" for more information.\n".utf8))
    exit(1)
} catch {
    FileHandle.standardError.write(Data("Try \"\(programName) --help\" for more information.\n".utf8))
    exit(1)
}
if options.showHelp {
    print(CommandLineOptions.usage)
    exit(0)
}
if options.showVersion {
    // Line 1 as PgBouncer prints it and as SHOW VERSION answers: scripts read the version from `--version | head -1`.
    print("PgBouncer \(ShowTables.pgbouncerVersion) (Shoal \(version))\nShoal \(version)\ntls: swift-nio-ssl (BoringSSL)\n"
          + "CPUs available (worker_threads = 0): \(System.coreCount)")
    exit(0)
}

// MARK: Configuration

let bootstrapSink = LogSink(quiet: options.quiet, logfile: nil)
if options.check {
    exit(ConfigCheck.run(path: options.configPath!))
}
let loaded: ConfigLoader.Result
do {
    loaded = try ConfigLoader().load(path: options.configPath!)
} catch {
    LoggingSystem.bootstrap { PgBouncerLogHandler(label: $0, sink: bootstrapSink, level: .info) }
    Logger(label: "shoal").critical("cannot load config file: \(error)")
    exit(1)
}
let config = loaded.config
let sink = LogSink(quiet: options.quiet || options.daemon, logfile: config.logfile, json: config.logFormat == "json")
let level: Logger.Level = max(options.verbose, config.verbose) >= 2 ? .trace : max(options.verbose, config.verbose) == 1 ? .debug : .info
LoggingSystem.bootstrap { PgBouncerLogHandler(label: $0, sink: sink, level: level) }
let logger = Logger(label: "shoal")
for warning in loaded.warnings { logger.warning("\(warning)") }
if options.reboot {
    // PgBouncer's own words for -R, then what Shoal does instead of taking the old process's sockets over.
    logger.warning("Online restart is deprecated, use so_reuseport instead; Shoal does not take over another process's sockets (-R), starting normally")
}

if options.daemon && config.pidfile == nil {
    logger.critical("daemon needs pidfile configured")
    exit(1)
}
if options.daemon {
    // Detach: fork once, new session, stdio to /dev/null. The parent exits 0.
    let child = fork()
    if child < 0 { logger.critical("fork failed"); exit(1) }
    if child > 0 { exit(0) }
    setsid()
    let null = open("/dev/null", O_RDWR)
    dup2(null, 0); dup2(null, 1); dup2(null, 2)
}
if let pidfile = config.pidfile {
    if let existing = try? String(contentsOfFile: pidfile, encoding: .utf8), let pid = Int32(existing.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0 {
        logger.critical("pidfile '\(pidfile)' exists, another instance running?")
        exit(1)
    } else if FileManager.default.fileExists(atPath: pidfile) {
        logger.info("stale pidfile, removing")
        try? FileManager.default.removeItem(atPath: pidfile)
    }
    try? "\(getpid())\n".write(toFile: pidfile, atomically: false, encoding: .utf8)
}
func removePidfile() {
    if let pidfile = config.pidfile { try? FileManager.default.removeItem(atPath: pidfile) }
}

var limit = rlimit()
getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
if limit.rlim_cur < limit.rlim_max {
    // Each client and server costs a descriptor; take what the hard limit allows.
    limit.rlim_cur = limit.rlim_max
    setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
}
logger.info("process up: Shoal \(version), SwiftNIO, tls: none, event loops: \(config.eventLoopCount(cpusAvailable: System.coreCount))")
logger.info("kernel file descriptor limit: \(limit.rlim_cur) (hard: \(limit.rlim_max)); max_client_conn: \(config.maxClientConn)")

let userList = ShoalServer.loadUserList(config: config, logger: logger)
let server = ShoalServer(config: config, userList: userList, logger: logger, logSink: sink)

// MARK: Signals

signal(SIGPIPE, SIG_IGN)
let signalQueue = DispatchQueue(label: "shoal.signals")
var signalSources: [DispatchSourceSignal] = []
var shuttingDown = false
func onSignal(_ number: Int32, _ handler: @escaping () -> Void) {
    signal(number, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: number, queue: signalQueue)
    source.setEventHandler(handler: handler)
    source.resume()
    signalSources.append(source)
}
onSignal(SIGHUP) {
    logger.info("got SIGHUP, re-reading config")
    SystemdNotify.reloading()
    server.reload()
    SystemdNotify.send("READY=1")
}
onSignal(SIGQUIT) {
    logger.info("got SIGQUIT, fast exit")
    removePidfile()
    exit(0)
}
// SIGTERM = SHUTDOWN WAIT_FOR_CLIENTS, SIGINT = SHUTDOWN WAIT_FOR_SERVERS; a second one while shutting down exits now.
func shutdownSignal(_ name: String, _ mode: AdminCommand.ShutdownMode, _ line: String) {
    if shuttingDown {
        logger.info("got \(name) while shutting down, fast exit")
        removePidfile()
        exit(0)
    }
    shuttingDown = true
    logger.info("\(line)")
    SystemdNotify.send("STOPPING=1")
    server.requestShutdown(mode)
}
onSignal(SIGTERM) {
    shutdownSignal("SIGTERM", .waitForClients, "got SIGTERM, shutting down, waiting for all clients disconnect")
}
onSignal(SIGINT) {
    shutdownSignal("SIGINT", .waitForServers, "got SIGINT, shutting down, waiting for all servers connections to be released")
}
onSignal(SIGUSR1) {
    logger.info("got SIGUSR1, pausing all activity")
    server.pauseAll()
}
onSignal(SIGUSR2) {
    logger.info("\(server.resumeAll())")
}
// The console's SHUTDOWN, and the end of a WAIT_FOR_* shutdown.
server.runtime.onExit = { _ in
    removePidfile()
    exit(0)
}

do {
    try await server.start()
} catch {
    logger.critical("\(error)")
    removePidfile()
    exit(1)
}
SystemdNotify.send("READY=1\nSTATUS=serving \(config.databases.count) databases\nMAINPID=\(getpid())")
// Serve until a signal ends the process.
while true {
    try? await Task.sleep(nanoseconds: 3_600_000_000_000)
}

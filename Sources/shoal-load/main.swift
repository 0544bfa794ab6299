import Foundation
import LoadHarness

/// shoal-load: replays the PHP request pattern through libpq against one or more targets, interleaved in rounds.
let usage = """
    Usage: shoal-load [options] --target NAME=CONNINFO [--target NAME=CONNINFO ...]

      --workload W        php-request (default), php-persistent, select-only, idle (connect and hold),
                          idle-after-query (one 32 KB statement, then hold), or script
      --script FILE       SQL statements for --workload script (one per ';'-terminated line group)
      --users N           closed loop: N virtual users, each starting its next request at once (default 100)
      --rate R            open loop: R requests/s, latency measured from each request's intended start
      --max-in-flight N   open loop: at most N requests at once (default 5000)
      --duration S        seconds per target in all (default 10), split over the rounds
      --requests N        stop each target's run after N requests in all (split over the rounds)
      --ramp-up S         closed loop: start the users evenly over S seconds of each run
      --rounds K          interleave the targets in K rounds (default 3)
      --baseline NAME     the target the others are compared with (default: the first)
      --init              create the Moodle-like schema on every target first
      --init-users N      users for --init (default 10000); courses are a hundredth of that
      --json FILE         write the results as JSON
      --html FILE         write an HTML page with latency-percentile and throughput charts (inline SVG)
      --help

    Each CONNINFO is a libpq connection string, e.g. "host=127.0.0.1 port=6432 dbname=moodle user=moodle password=…".
    """

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("shoal-load: \(message)\n".utf8))
    exit(2)
}

var targets: [(String, String)] = []
var workloadName = "php-request"
var scriptPath: String?
var users = 100
var rate: Double?
var maxInFlight = 5000
var duration = 10.0
var rounds = 3
var baseline: String?
var initialise = false
var initUsers = 10_000
var jsonPath: String?
var htmlPath: String?
var requestLimit: Int?
var rampUp = 0.0

var arguments = Array(CommandLine.arguments.dropFirst())
@MainActor func value(_ option: String) -> String {
    guard !arguments.isEmpty else { fail("\(option) needs a value") }
    return arguments.removeFirst()
}
while !arguments.isEmpty {
    let option = arguments.removeFirst()
    switch option {
    case "--target":
        let spec = value(option)
        guard let equals = spec.firstIndex(of: "="), equals != spec.startIndex else { fail("--target takes NAME=CONNINFO, got \(spec)") }
        targets.append((String(spec[..<equals]), String(spec[spec.index(after: equals)...])))
    case "--workload": workloadName = value(option)
    case "--script": scriptPath = value(option)
    case "--users": guard let n = Int(value(option)), n > 0 else { fail("--users takes a positive number") }; users = n
    case "--rate": guard let r = Double(value(option)), r > 0 else { fail("--rate takes a positive number") }; rate = r
    case "--max-in-flight": guard let n = Int(value(option)), n > 0 else { fail("--max-in-flight takes a positive number") }; maxInFlight = n
    case "--duration": guard let d = Double(value(option)), d > 0 else { fail("--duration takes seconds") }; duration = d
    case "--rounds": guard let k = Int(value(option)), k > 0 else { fail("--rounds takes a positive number") }; rounds = k
    case "--baseline": baseline = value(option)
    case "--init": initialise = true
    case "--init-users": guard let n = Int(value(option)), n >= 100 else { fail("--init-users takes a number of at least 100") }; initUsers = n
    case "--json": jsonPath = value(option)
    case "--html": htmlPath = value(option)
    case "--requests": guard let n = Int(value(option)), n > 0 else { fail("--requests takes a positive number") }; requestLimit = n
    case "--ramp-up": guard let r = Double(value(option)), r >= 0 else { fail("--ramp-up takes seconds") }; rampUp = r
    case "--help", "-h": print(usage); exit(0)
    default: fail("unknown option \(option)\n\(usage)")
    }
}
guard !targets.isEmpty else { fail("no --target given\n\(usage)") }
if let baseline, !targets.contains(where: { $0.0 == baseline }) { fail("--baseline \(baseline) is not a target") }

let courses = max(1, initUsers / 100)
let workload: Workload
switch workloadName {
case "php-request": workload = .phpRequest(users: initUsers, courses: courses, persistent: false)
case "php-persistent": workload = .phpRequest(users: initUsers, courses: courses, persistent: true)
case "select-only": workload = .selectOnly(users: initUsers)
case "idle": workload = .idle
case "idle-after-query": workload = .idleAfterQuery(rows: 8192)
case "script":
    guard let scriptPath else { fail("--workload script needs --script FILE") }
    guard let text = try? String(contentsOfFile: scriptPath, encoding: .utf8) else { fail("cannot read script \(scriptPath)") }
    do { workload = try .script(text: text, path: scriptPath, connectPerRequest: false) } catch { fail("\(error)") }
default: fail("unknown workload \(workloadName)")
}

// Thousands of connections need thousands of descriptors: take what the hard limit allows.
var limit = rlimit()
getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
limit.rlim_cur = limit.rlim_max
setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
let concurrency = rate == nil ? users : maxInFlight
if rlim_t(concurrency + 64) > limit.rlim_cur {
    fail("\(concurrency) connections need more file descriptors than the limit of \(limit.rlim_cur); raise it with ulimit -n (hard limit)")
}

for (name, conninfo) in targets {
    if let problem = SchemaInit.preflight(conninfo: conninfo + " connect_timeout=5") { fail("target \(name): \(problem)") }
    if initialise {
        do { try SchemaInit.run(conninfo: conninfo, users: initUsers, courses: courses) } catch { fail("target \(name): --init failed: \(error)") }
        print("initialised \(name): \(initUsers) users, \(courses) courses")
    }
}

let mode: LoadRunner.Mode = rate.map { .open(rate: $0, maxInFlight: maxInFlight) } ?? .closed(users: users)
let modeText = rate.map { "open loop at \($0) requests/s" } ?? "closed loop with \(users) users"
print("shoal-load: \(workload.name), \(modeText), \(duration) s per target in \(rounds) rounds")
var totals = targets.map { TargetStats(name: $0.0) }
for round in 1...rounds {
    for (index, (name, conninfo)) in targets.enumerated() {
        let runner = LoadRunner(name: name, conninfo: conninfo, workload: workload, mode: mode)
        runner.rampUp = rampUp
        runner.requestLimit = requestLimit.map { max(1, $0 / rounds) }
        var elapsed = 0
        let stats = runner.run(seconds: duration / Double(rounds)) { stats, inFlight in
            elapsed += 1
            let line = String(format: "\r[round %d/%d] %@ %3ds: %d requests, %d errors, %d in flight   ", round, rounds, name, elapsed, stats.requests, stats.errorCount, inFlight)
            FileHandle.standardError.write(Data(line.utf8))
        }
        totals[index].add(stats)
    }
}
FileHandle.standardError.write(Data("\n".utf8))
print(Report.table(totals, baseline: baseline))
if let jsonPath {
    do { try Report.json(totals, workload: workload.name, mode: modeText).write(toFile: jsonPath, atomically: true, encoding: .utf8) } catch {
        fail("cannot write \(jsonPath): \(error)")
    }
}
if let htmlPath {
    do { try Report.html(totals, title: "shoal-load \(workload.name), \(modeText)").write(toFile: htmlPath, atomically: true, encoding: .utf8) } catch {
        fail("cannot write \(htmlPath): \(error)")
    }
}
exit(totals.contains { $0.requests == 0 } ? 1 : 0)

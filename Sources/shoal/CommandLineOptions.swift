/// PgBouncer's command line: `shoal [-d] [-q] [-v] [-u user] config.ini`, plus `-V` and `-h`.
struct CommandLineOptions {
    var daemon = false
    var quiet = false
    var verbose = 0
    var user: String?
    var configPath: String?
    var showVersion = false
    var showHelp = false
    /// Shoal's own: read the config and the auth file, say what would be served, exit (non-zero on error).
    var check = false
    /// `-R`: PgBouncer's deprecated online restart (taking over the old process's sockets). Shoal does not take
    /// sockets over; it says so and starts normally, which PgBouncer also does when no old process answers.
    var reboot = false

    enum ParseError: Error {
        case badOption(String)
        case noConfigFile
    }

    static func parse(_ arguments: [String]) throws(ParseError) -> CommandLineOptions {
        var options = CommandLineOptions()
        var positional: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                positional.append(contentsOf: arguments[index...])
                break
            }
            if argument.hasPrefix("--") {
                switch argument {
                case "--daemon": options.daemon = true
                case "--quiet": options.quiet = true
                case "--verbose": options.verbose += 1
                case "--version": options.showVersion = true
                case "--help": options.showHelp = true
                case "--reboot": options.reboot = true
                case "--check": options.check = true
                case let long where long.hasPrefix("--user="): options.user = String(long.dropFirst("--user=".count))
                case "--user":
                    guard index < arguments.count else { throw .badOption(argument) }
                    options.user = arguments[index]
                    index += 1
                default: throw .badOption(argument)
                }
            } else if argument.hasPrefix("-") && argument.count > 1 {
                var flags = Array(argument.dropFirst())
                while !flags.isEmpty {
                    let flag = flags.removeFirst()
                    switch flag {
                    case "d": options.daemon = true
                    case "q": options.quiet = true
                    case "v": options.verbose += 1
                    case "V": options.showVersion = true
                    case "h": options.showHelp = true
                    case "R": options.reboot = true
                    case "u":
                        if !flags.isEmpty {
                            options.user = String(flags)
                            flags = []
                        } else {
                            guard index < arguments.count else { throw .badOption(argument) }
                            options.user = arguments[index]
                            index += 1
                        }
                    default: throw .badOption("-\(flag)")
                    }
                }
            } else {
                positional.append(argument)
            }
        }
        if options.showVersion || options.showHelp { return options }
        guard positional.count == 1 else { throw .noConfigFile }
        options.configPath = positional[0]
        return options
    }

    static let usage = """
        shoal is a PostgreSQL connection pooler that reads PgBouncer's configuration.

        Usage:
          shoal [OPTION]... CONFIG_FILE

        Options:
          -d, --daemon         run in background (as a daemon)
          -q, --quiet          run quietly
          -R, --reboot         not supported (use so_reuseport): logged, then a normal start
              --check          read the config and auth file, print what would be served, exit
                               (non-zero with file:line and key on an error)
          -u, --user=USERNAME  accepted for compatibility; not supported yet
          -v, --verbose        increase verbosity
          -V, --version        show version, then exit
          -h, --help           show this help, then exit
        """
}

// pgbouncer.ini, [databases] connection strings, [users] lines, userlist.txt and auth_hba_file as an operator might
// write them:
// each loads or is refused with a diagnostic that names file and line, never traps; and for a config that loads,
// every live setting SHOW CONFIG prints is accepted back by the console's SET with the same result (reload and
// SET refuse what start-up refuses, and accept what it accepts).
import FuzzDriver
import Configuration

fuzz { input in
    let text = String(decoding: input, as: UTF8.self)
    // The input is the main file; an %include gets a small fixed file (or, for "missing", none), so nesting stays
    // bounded by the reader's limit instead of growing with the input.
    let reader = IniReader { path in
        if path == "fuzz.ini" { return text }
        if path.contains("missing") { throw ConfigDiagnostic(.error, file: path, line: 0, "no such file") }
        return "[pgbouncer]\npool_mode = session\n"
    }
    _ = UserList.parse(text, file: "userlist.txt")
    // The same bytes as HBA rules (an @file gets a fixed name list): loaded or refused with file and line, and
    // rules that load decide a login without trapping.
    do {
        let rules = try HBARules.load(path: "/etc/shoal/hba.conf", read: { path in
            if path == "/etc/shoal/hba.conf" { return text }
            if path.contains("missing") { throw ConfigDiagnostic(.error, file: path, line: 0, "no such file") }
            return "alice, bob\n\"odd name\"\n"
        })
        for peer in [HBARules.Peer.unixSocket, .inet([10, 0, 0, 1]), .inet([UInt8](repeating: 0, count: 15) + [1])] {
            _ = rules.rule(for: peer, tls: input.count % 2 == 0, database: "moodle", user: "alice")
        }
    } catch let diagnostic as ConfigDiagnostic {
        // Every refusal names its line, bar the one file that could not be read at all.
        precondition(!diagnostic.file.isEmpty && (diagnostic.line > 0 || diagnostic.message.hasPrefix("cannot read hba file")),
                     "an HBA diagnostic without its place: \(diagnostic)")
    } catch {
        preconditionFailure("not a diagnostic: \(error)")
    }
    let result: ConfigLoader.Result
    do {
        result = try ConfigLoader(reader: reader).load(path: "fuzz.ini")
    } catch let diagnostic as ConfigDiagnostic {
        precondition(diagnostic.line >= 0 && !diagnostic.file.isEmpty, "a diagnostic without its place: \(diagnostic)")
        return
    } catch {
        preconditionFailure("not a diagnostic: \(error)")
    }
    // Every live setting set back to what SHOW CONFIG prints, one after another on one copy: each is accepted,
    // and SHOW CONFIG then prints the same list.
    let shown = ConfigLoader.settings(of: result.config)
    var copy = result.config
    for setting in shown where setting.changeable {
        guard let value = setting.value else { continue }
        do {
            try ConfigLoader.set(setting.key, to: value, in: &copy)
        } catch {
            preconditionFailure("SHOW CONFIG prints \(setting.key) = '\(value)', and SET refuses it: \(error)")
        }
    }
    for (before, after) in zip(shown, ConfigLoader.settings(of: copy)) where before.value != after.value {
        preconditionFailure("SET \(before.key) = '\(before.value ?? "")' reads back as '\(after.value ?? "nil")'")
    }
}

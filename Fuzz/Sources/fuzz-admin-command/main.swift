// The admin console's grammar (SHOW …, PAUSE db, SET key = value, KILL_CLIENT id, SHUTDOWN WAIT_FOR_…) on any
// text a console user can send: it parses or refuses with an AdminError, and never traps.
import FuzzDriver
import AdminConsole

fuzz { input in
    let text = String(decoding: input, as: UTF8.self)
    _ = try? AdminCommandParser.parse(text)
    return
}

/// What Shoal knows of one server connection's session: the tracked parameters and session settings as
/// PostgreSQL confirmed them, the prepared statements Shoal made there, and what the server reports about
/// itself.
///
/// It travels with the server: owned by the server's EventLoop while the server is idle or resetting, lent
/// whole to the linked client's `LinkStateMachine` for the link, and handed back through the server's loop at
/// release. Nobody else reads or writes it meanwhile, so no field is shared across loops.
public struct ServerSession: Sendable {
    public var parameters = ParameterSet()
    public var statements = ServerStatements()
    public var facts: ServerFacts?

    public init(parameters: ParameterSet = ParameterSet(), statements: ServerStatements = ServerStatements(), facts: ServerFacts? = nil) {
        self.parameters = parameters
        self.statements = statements
        self.facts = facts
    }

    /// A ParameterStatus the server sent: server-owned names change the facts, the rest the parameters.
    public mutating func reported(_ name: String, _ value: String) {
        if ParameterSet.serverOwned.contains(name.lowercased()) {
            facts = facts?.with(name, value)
        } else {
            parameters.set(name, value)
        }
    }
}

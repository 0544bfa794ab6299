public enum PoolMode: String, Sendable, CaseIterable {
    case session, transaction, statement
}

public enum AuthType: String, Sendable, CaseIterable {
    case any, trust, plain, md5, cert, hba
    case scramSHA256 = "scram-sha-256"
}

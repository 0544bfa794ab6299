/// Aurora endpoint names: a cluster endpoint `NAME.cluster-ID.REGION.rds.amazonaws.com` (also `cluster-ro-`,
/// `cluster-custom-`) has instance endpoints `INSTANCE.ID.REGION.rds.amazonaws.com`, where INSTANCE is what
/// `aurora_replica_status()` reports as `server_id`.
public enum AuroraEndpoints {
    /// The instance host pattern (`?` = server_id) for a cluster endpoint, or nil if `host` is not one.
    public static func instancePattern(forClusterHost host: String) -> String? {
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 3 else { return nil }
        let second = labels[1]
        for prefix in ["cluster-custom-", "cluster-ro-", "cluster-"] where second.hasPrefix(prefix) {
            let id = second.dropFirst(prefix.count)
            guard !id.isEmpty else { return nil }
            return (["?", String(id)] + labels.dropFirst(2).map(String.init)).joined(separator: ".")
        }
        return nil
    }
}

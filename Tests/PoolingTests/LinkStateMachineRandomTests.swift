import Configuration
import NIOCore
import Pooling
import PostgresWire
import LinkModel
import Testing

/// Thousands of random client lives through the machine against `ModelBackend` (see `LinkLives` for what each
/// life does and what is checked after every event). The fuzz target `fuzz-link-machine` runs the same lives with
/// the choices taken from its input instead of a seeded generator.
@Suite struct LinkStateMachineRandomTests {
    /// The same seeded generator as the ledger's random test: a failure replays exactly.
    typealias Random = SettingsLedgerRandomTests.SplitMix64

    @Test func randomClientLivesNeverReleaseADirtyOrBusyServer() {
        var choices = GeneratorChoices(Random(state: 0x5EED_1234))
        var lives = LinkLives()
        for life in 0..<5000 {
            lives.live(life, &choices)
        }
        #expect(lives.violations.isEmpty, "\(lives.violations.prefix(5))")
        #expect(lives.releases > 1000, "the lives reached the interesting states")
    }
}

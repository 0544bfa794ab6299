// The linked phase as a whole: the same client lives as LinkStateMachineRandomTests (pipelines, errors, blocks,
// SET/RESET, COPY, cancels, disconnects, every stream cut at chosen places) against the model backend, with every
// choice taken from the fuzzer's input, so coverage guides it to the rare interleavings. Any broken invariant
// (a release while replies are owed, in COPY, in a block or with a cancel out; a settings view that differs from
// the backend's; client bytes held beyond one message) traps with the life's recent history.
import FuzzDriver
import LinkModel

fuzz { input in
    var choices = ByteChoices(Array(input))
    var lives = LinkLives()
    var life = 0
    while !choices.exhausted {
        lives.live(life, &choices)
        life += 1
    }
    if let violation = lives.violations.first { preconditionFailure(violation) }
    return
}

#include <stddef.h>
#include <stdint.h>

// libFuzzer's entry for programs that own main(): SwiftPM names every executable's entry point itself, so the
// targets call the driver from their top-level code instead of relying on libFuzzer's main().
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));

// getrandom(2) for Shoal's nonces and keys: Glibc's Swift module does not export sys/random.h, and the
// standard library's generator makes one getrandom() call per eight bytes.
#include <sys/random.h>

#!/usr/bin/env python3
"""Reads `perf report --no-children --sort sym --stdio -F overhead,sym` on stdin and splits the samples into
kernel, NIO, Swift runtime, Shoal's own modules, crypto, logging and libc, then lists the top symbols.

Swift symbols are classified by the module that defines them: the first identifier of a mangled name
(`$s8NIOPosix...`) or of a demangled one (`NIOPosix.Selectable...`, after `generic specialization <...> of`,
`closure #1 in` and similar prefixes). A generic specialised into Shoal's code still counts for its own module.
"""
import re, sys
from collections import defaultdict

SHOAL = {"ProxyServer", "Pooling", "PostgresWire", "Configuration", "AdminConsole", "shoal", "LinkModel"}
NIO_PREFIXES = ("NIO", "_NIO", "CNIO")
CRYPTO = {"Crypto", "_CryptoExtras", "CCryptoBoringSSL", "CryptoBoringWrapper"}
LIBC = ("malloc", "free", "mem", "str", "__libc", "_int_", "pthread", "__lll", "cfree", "epoll", "__GI", "__memcpy",
        "__memset", "__memmove", "__strlen", "realloc", "calloc", "tcache", "unlink_chunk", "__read", "__write",
        "__send", "__recv", "accept", "__close", "__errno", "getpid", "__clock", "clock_gettime", "__vdso")
PREFIX = re.compile(r"^((generic |function signature )?specialization <[^>]*> of |(partial apply forwarder|reabstraction thunk|outlined \w+|closure #\d+|implicit closure #\d+|merged|protocol witness|type metadata accessor|lazy protocol witness table accessor|key path getter|value witness|@objc|dispatch thunk)[^\n]*? (for|in|of) )+")


def module_of(symbol):
    if symbol.startswith("$s") or symbol.startswith("_$s"):
        body = symbol.split("$s", 1)[1]
        if body[:1] in ("s", "S"):
            return "Swift"
        match = re.match(r"(\d+)", body)
        if match:
            length = int(match.group(1))
            return body[len(match.group(1)):len(match.group(1)) + length]
        return "?"
    stripped = PREFIX.sub("", symbol)
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\.", stripped)
    if match:
        return match.group(1)
    return None


def category(kind, symbol):
    if kind == "k":
        return "kernel"
    if symbol.startswith("swift_") or symbol.startswith("_swift") or symbol.startswith("__swift"):
        return "Swift runtime"
    if symbol.startswith("CCryptoBoringSSL") or symbol.startswith("CNIOBoringSSL"):
        return "crypto"
    if symbol.startswith("c_nio_") or symbol.startswith("CNIO"):
        return "NIO"
    module = module_of(symbol)
    if module:
        if module == "Swift" or module.startswith("_Swift") or module == "_Concurrency":
            return "Swift runtime"
        if module in SHOAL:
            return "Shoal"
        if module.startswith(NIO_PREFIXES):
            return "NIO"
        if module in CRYPTO or module.startswith("CCrypto"):
            return "crypto"
        if module in ("Logging", "Metrics", "CoreMetrics"):
            return "logging/metrics"
        if module in ("Foundation", "FoundationEssentials", "FoundationInternationalization"):
            return "Foundation"
        return "other Swift (" + module + ")"
    if symbol.startswith(LIBC) or symbol.startswith("0x"):
        return "libc and unresolved"
    return "other"


def main():
    totals = defaultdict(float)
    symbols = []
    line_re = re.compile(r"^\s*([0-9.]+)%\s+\[(.)\]\s+(.*)$")
    for line in sys.stdin:
        match = line_re.match(line)
        if not match:
            continue
        share, kind, symbol = float(match.group(1)), match.group(2), match.group(3).strip()
        totals[category(kind, symbol)] += share
        symbols.append((share, kind, symbol))
    if not symbols:
        print("no samples (is perf allowed here? kernel.perf_event_paranoid)")
        return 1
    print("\nsamples by part:")
    for name, share in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {share:6.2f}%  {name}")
    print("\ntop symbols:")
    symbols.sort(key=lambda item: -item[0])
    for share, kind, symbol in symbols[:int(sys.argv[1]) if len(sys.argv) > 1 else 30]:
        shown = symbol if len(symbol) <= 150 else symbol[:147] + "..."
        print(f"  {share:6.2f}%  [{kind}] {shown}  ({category(kind, symbol)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

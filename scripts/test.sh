#!/usr/bin/env bash
# The whole test suite: installs prerequisites, builds once (debug), runs unit and integration tests.
# Integration tests start their own PostgreSQL 15 on loopback (as the `postgres` user when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="/usr/lib/postgresql/15/bin:$PATH"
swift build --build-tests
# The image test packs the release binary as the Dockerfile does (static Swift runtime).
swift build -c release --static-swift-stdlib --product shoal
# swift test runs XCTest then Swift Testing; its exit status covers both (never grep its output).
# Suites one after another: the integration suites share one PostgreSQL and two cores.
swift test --skip-build --no-parallel

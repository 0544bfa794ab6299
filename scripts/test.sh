#!/usr/bin/env bash
# The whole test suite: installs prerequisites, builds once (debug), runs unit and integration tests.
# Integration tests start their own PostgreSQL 15 on loopback (as the `postgres` user when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="/usr/lib/postgresql/15/bin:$PATH"
swift build --build-tests
# docker/Dockerfile's build stage, run on exactly the files its COPY lines and .dockerignore take from this
# checkout: the image and .deb tests use the binary it makes (static Swift runtime, stripped).
python3 docker/run-build-stage.py
# swift test runs XCTest then Swift Testing; its exit status covers both (never grep its output).
# Suites one after another: the integration suites share one PostgreSQL and two cores.
swift test --skip-build --no-parallel
# Every libFuzzer target for a few seconds on its seed corpus (Fuzz/README.md): a crash, leak or broken invariant
# fails the suite. Its own build (ASan + coverage) goes to .build-fuzz.
FUZZ_SEED=${FUZZ_SEED:-1} bash Fuzz/run.sh "${FUZZ_SECONDS:-5}"

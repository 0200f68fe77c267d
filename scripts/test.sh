#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real clients and servers the tests
# drive (skopeo, umoci, containerd, podman, oras, PostgreSQL, moto), starts PostgreSQL and
# an S3-compatible server (moto, for the S3 blob store's tests), then
# checks formatting and lints and runs every test. Run as root on Debian 12.
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing test tools"
bash scripts/install-test-tools.sh

step "starting PostgreSQL"
BERTH_TEST_POSTGRES_URL=$(bash scripts/start-postgres.sh)
export BERTH_TEST_POSTGRES_URL

step "starting the S3 test server (moto)"
BERTH_TEST_S3_URL=$(bash scripts/start-s3.sh)
# The bucket start-s3.sh creates; moto accepts any credentials.
export BERTH_TEST_S3_URL BERTH_TEST_S3_BUCKET=${BERTH_TEST_S3_BUCKET:-berth-test}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, integration, metadata suite on SQLite and PostgreSQL, end to end)"
cargo test --workspace --locked --no-fail-fast

#!/usr/bin/env bash
# Installs what `make test` needs that a fresh machine may lack, and nothing else.
# Idempotent: each step checks first. Later stages add their servers here
# (prometheus, prometheus-alertmanager, a project-local Python virtualenv, helm).
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "prereqs: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# rustfmt and clippy ship as rustup components; add them when missing.
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "prereqs: installing rustup component ${component}"
    rustup component add "${component}"
  fi
done

echo "prereqs: ok (cargo $(cargo --version | cut -d' ' -f2))"

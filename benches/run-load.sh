#!/usr/bin/env bash
# Measures the latency the gateway adds in front of Bedrock.
#
# Starts benches' mock-upstream (a Bedrock runtime stand-in) and the real gateway in front of it,
# then runs loadgen against the mock directly and through the gateway's Bedrock front door, for
# InvokeModel and InvokeModelWithResponseStream, at 1 connection (latency) and at --connections
# (throughput). Prints a markdown table of direct vs via-gateway percentiles and the difference.
#
#   benches/run-load.sh [--write] [--no-build] [--requests N] [--warmup N]
#                       [--connections C] [--gateway-threads T] [--no-pin]
#
#   --write              also rewrite the results section of benches/RESULTS.md
#   --no-build           use the binaries already in target/release
#   --requests N         timed requests per 1-connection run (default 10000; 3x that at C conns)
#   --warmup N           untimed, checked requests before each run (default 500)
#   --connections C      connections for the throughput rows (default 16; 0 = skip them)
#   --gateway-threads T  the gateway's [server] threads (default 1 when pinned, else unset)
#   --no-pin             do not pin processes to cores with taskset
#
# GATEWAY_BIN overrides the gateway binary (default target/release/gateway).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }benches/run-load.sh${*:+ $*}"
NICENESS=$(nice)
[[ $NICENESS != 0 ]] && COMMAND="nice -n $NICENESS${GATEWAY_BIN:+ env} $COMMAND"

WRITE=0 BUILD=1 PIN=1 REQUESTS=10000 WARMUP=500 CONNS=16 GW_THREADS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --write) WRITE=1 ;;
        --no-build) BUILD=0 ;;
        --no-pin) PIN=0 ;;
        --requests) REQUESTS=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --gateway-threads) GW_THREADS=$2; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-load.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in jq curl python3; do
    command -v "$tool" >/dev/null || { echo "run-load.sh: needs $tool" >&2; exit 2; }
done

if [[ $BUILD == 1 ]]; then
    echo "== cargo build --release -p gateway -p gateway-benches" >&2
    cargo build --release -p gateway -p gateway-benches >&2
fi
BIN=$ROOT/target/release
GATEWAY_BIN=${GATEWAY_BIN:-$BIN/gateway}
for b in "$GATEWAY_BIN" "$BIN/mock-upstream" "$BIN/loadgen"; do
    [[ -x $b ]] || { echo "run-load.sh: $b is missing (drop --no-build?)" >&2; exit 2; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- cores: the mock and the gateway on different cores; loadgen on a third if there is one,
# else with the mock (the gateway's core stays its own).
NPROC=$(nproc)
PIN_MOCK=() PIN_GW=() PIN_LOAD=() PINNING="not pinned"
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && [[ $NPROC -ge 2 ]]; then
    load_cpu=0
    [[ $NPROC -ge 3 ]] && load_cpu=2
    PIN_MOCK=(taskset -c 0) PIN_GW=(taskset -c 1) PIN_LOAD=(taskset -c "$load_cpu")
    PINNING="taskset: mock-upstream on CPU 0, gateway on CPU 1, loadgen on CPU $load_cpu"
    GW_THREADS=${GW_THREADS:-1}
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the mock
MOCK_PORT=$(free_port)
"${PIN_MOCK[@]}" "$BIN/mock-upstream" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    grep -q listening "$WORK/mock.log" && break
    sleep 0.05
done
grep -q listening "$WORK/mock.log" || { cat "$WORK/mock.log" >&2; echo "run-load.sh: mock did not start" >&2; exit 1; }
echo "== $(cat "$WORK/mock.log")" >&2

# --- the gateway
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [[ $ADMIN_PORT == "$GW_PORT" ]]; do ADMIN_PORT=$(free_port); done
CONFIG=$WORK/gateway.toml
{
    echo '[server]'
    echo "listen = \"127.0.0.1:$GW_PORT\""
    echo "admin_listen = \"127.0.0.1:$ADMIN_PORT\""
    [[ -n $GW_THREADS ]] && echo "threads = $GW_THREADS"
    echo
    echo '[front_doors.bedrock]'
    echo 'prefix = "/bedrock"'
    echo
    echo '[[backends]]'
    echo 'name = "bench-mock"'
    echo 'kind = "bedrock"'
    echo 'region = "us-east-1"'
    echo "endpoint = \"http://127.0.0.1:$MOCK_PORT\""
    echo "control_endpoint = \"http://127.0.0.1:$MOCK_PORT\""
} >"$CONFIG"

env AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=benchsecret \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/nonexistent \
    AWS_SHARED_CREDENTIALS_FILE=/nonexistent RUST_LOG=warn \
    "${PIN_GW[@]}" "$GATEWAY_BIN" run --config "$CONFIG" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
ready=0
for _ in $(seq 300); do
    if ! kill -0 "$GW_PID" 2>/dev/null; then
        break
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz" || true)
    if [[ $code == 200 ]]; then ready=1; break; fi
    sleep 0.1
done
if [[ $ready != 1 ]]; then
    echo "run-load.sh: the gateway did not become ready (GET /readyz on 127.0.0.1:$ADMIN_PORT); config:" >&2
    cat "$CONFIG" >&2
    echo "--- gateway log:" >&2
    tail -n 50 "$WORK/gateway.log" >&2
    exit 1
fi
echo "== gateway ready: data 127.0.0.1:$GW_PORT, admin 127.0.0.1:$ADMIN_PORT ($PINNING${GW_THREADS:+, gateway threads = $GW_THREADS})" >&2

DIRECT=http://127.0.0.1:$MOCK_PORT
VIA=http://127.0.0.1:$GW_PORT/bedrock
FAILED=0

# load KIND CONNS REQUESTS TARGET NAME -> $WORK/NAME.json
load() {
    local kind=$1 conns=$2 n=$3 target=$4 name=$5
    echo "== loadgen $kind x$n, $conns connection(s), $target" >&2
    if ! "${PIN_LOAD[@]}" "$BIN/loadgen" --target "$target" --kind "$kind" --connections "$conns" \
        --requests "$n" --warmup "$WARMUP" --json >"$WORK/$name.json"; then
        FAILED=1
        echo "run-load.sh: loadgen reported errors:" >&2
        jq -r '.first_errors[]?' "$WORK/$name.json" >&2 || cat "$WORK/$name.json" >&2
    fi
}

RUNS=()
for kind in invoke stream; do
    for conns in 1 "$CONNS"; do
        [[ $conns == 0 ]] && continue
        n=$REQUESTS
        [[ $conns -gt 1 ]] && n=$((REQUESTS * 3))
        load "$kind" "$conns" "$n" "$DIRECT" "$kind-$conns-direct"
        load "$kind" "$conns" "$n" "$VIA" "$kind-$conns-via"
        RUNS+=("$kind-$conns")
    done
done

# --- the table
field() { jq -r "$1 // \"-\" | if type == \"number\" then (. * 10 | round / 10 | tostring) else . end" "$2"; }
added() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):+.1f}')" "$1" "$2" 2>/dev/null || echo -; }
TABLE=$WORK/table.md
{
    echo "| kind | conns | requests | direct p50 | direct p99 | via gateway p50 | via gateway p99 | added p50 | added p99 | direct req/s | via gateway req/s | errors | reconnects |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for run in "${RUNS[@]}"; do
        kind=${run%-*} conns=${run##*-}
        d=$WORK/$run-direct.json v=$WORK/$run-via.json
        metrics=(total_us)
        labels=("$kind")
        if [[ $kind == stream ]]; then
            metrics=(first_byte_us total_us)
            labels=("stream, first byte" "stream, last byte")
        fi
        for i in "${!metrics[@]}"; do
            m=${metrics[$i]}
            dp50=$(field ".$m.p50" "$d") dp99=$(field ".$m.p99" "$d")
            vp50=$(field ".$m.p50" "$v") vp99=$(field ".$m.p99" "$v")
            echo "| ${labels[$i]} | $conns | $(field .requests "$d") | $dp50 µs | $dp99 µs | $vp50 µs | $vp99 µs |" \
                "$(added "$dp50" "$vp50") µs | $(added "$dp99" "$vp99") µs | $(field .rps "$d") | $(field .rps "$v") |" \
                "$(field .errors "$d") / $(field .errors "$v") | $(field .reconnects "$d") / $(field .reconnects "$v") |"
        done
    done
} >"$TABLE"

echo
cat "$TABLE"
echo
echo "Request body $(field .request_bytes "$WORK/invoke-1-direct.json") B; invoke answer $(field .response_bytes "$WORK/invoke-1-direct.json") B;" \
    "stream answer $(field .response_bytes "$WORK/stream-1-direct.json") B direct, $(field .response_bytes "$WORK/stream-1-via.json") B via the gateway. $PINNING."

if [[ $WRITE == 1 ]]; then
    RESULTS=$ROOT/benches/RESULTS.md
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo "none (nothing committed yet)")
    if [[ $GATEWAY_BIN != "$BIN/gateway" ]]; then
        commit="$commit, but the gateway binary is $GATEWAY_BIN"
    elif [[ -n $(git status --porcelain -- gateway Cargo.lock 2>/dev/null) ]]; then
        commit="$commit (gateway/ has uncommitted changes)"
    fi
    cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
    SECTION=$WORK/section.md
    {
        echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $NPROC cores (${cpu:-unknown CPU}), commit $commit;" \
            "load average before the run: $LOAD_BEFORE."
        echo
        echo "Command: \`$COMMAND\`. $PINNING${GW_THREADS:+; gateway \`threads = $GW_THREADS\`}."
        if [[ $CONNS == 0 ]]; then
            echo "Requests: $REQUESTS per run, each after $WARMUP checked warm-up requests."
        else
            echo "Requests: $REQUESTS per 1-connection run, $((REQUESTS * 3)) per $CONNS-connection run, each after $WARMUP checked warm-up requests."
        fi
        echo
        cat "$TABLE"
        echo
        echo "<details><summary>raw loadgen output</summary>"
        echo
        echo '```json'
        for run in "${RUNS[@]}"; do
            jq -c . "$WORK/$run-direct.json" "$WORK/$run-via.json"
        done
        echo '```'
        echo
        echo "</details>"
    } >"$SECTION"
    python3 - "$RESULTS" "$SECTION" <<'EOF'
import sys
path, section = sys.argv[1], open(sys.argv[2]).read()
begin, end = "<!-- BEGIN run-load -->", "<!-- END run-load -->"
text = open(path).read()
if begin not in text or end not in text:
    sys.exit(f"{path}: markers {begin} / {end} not found")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{begin}\n{section}{end}{tail}")
EOF
    echo "== wrote $RESULTS" >&2
fi

exit $FAILED

#!/usr/bin/env bash
# Measures what holding many concurrent streams costs one gateway running the stock plugins.
#
# Starts benches' mock-upstream in pacing mode (each InvokeModelWithResponseStream answer is one
# event-stream frame every 1/R s for S seconds), the release gateway in front of it with the four
# stock plugins (audit-log to a file, auth with a key, model-rewrite, rate-limit with generous
# limits), then streamgen, which opens N streams over the ramp and reads every one to its end.
# Reports streams ok / failed, the gateway's RSS before the load and at the plateau (all streams
# open), the growth per open stream, its CPU time and the run's duration; checks one audit record
# per request.
#
#   benches/run-streams.sh [--write] [--no-build] [--streams N] [--seconds S]
#                          [--events-per-second R] [--ramp-s S] [--gateway-threads T]
#                          [--no-plugins]
#
#   --write                 also append the figures to benches/RESULTS.md
#   --no-build              use the binaries and plugins already built
#   --streams N             concurrent streams (default 10000)
#   --seconds S             how long each stream lasts (default 60)
#   --events-per-second R   frames per second per stream (default 1)
#   --ramp-s S              open the connections evenly over S seconds (default 5)
#   --gateway-threads T     the gateway's [server] threads (default: its own, one per core)
#   --no-plugins            no plugins and no audit file: what the proxy alone costs per stream
#
# A quick run: benches/run-streams.sh --streams 1000 --seconds 10.
# GATEWAY_BIN overrides the gateway binary (default target/release/gateway), BENCHES_BIN the
# directory of mock-upstream and streamgen (default target/release).
# Targets: no failed stream, and at most 32 KiB of gateway RSS per open stream.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${BENCHES_BIN:+BENCHES_BIN=$BENCHES_BIN }benches/run-streams.sh${*:+ $*}"

WRITE=0 BUILD=1 STREAMS=10000 SECONDS_=60 RATE=1 RAMP=5 GW_THREADS="" PLUGINS_ON=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --write) WRITE=1 ;;
        --no-build) BUILD=0 ;;
        --streams) STREAMS=$2; shift ;;
        --seconds) SECONDS_=$2; shift ;;
        --events-per-second) RATE=$2; shift ;;
        --ramp-s) RAMP=$2; shift ;;
        --gateway-threads) GW_THREADS=$2; shift ;;
        --no-plugins) PLUGINS_ON=0 ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-streams.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in jq curl python3; do
    command -v "$tool" >/dev/null || { echo "run-streams.sh: needs $tool" >&2; exit 2; }
done

RELEASE=$ROOT/target/release
GATEWAY_BIN=${GATEWAY_BIN:-$RELEASE/gateway}
BIN=${BENCHES_BIN:-$RELEASE}
if [[ $BUILD == 1 ]]; then
    echo "== cargo build --release -p gateway -p gateway-benches" >&2
    cargo build --release -p gateway -p gateway-benches >&2
    echo "== plugins (scripts/build-plugins.sh)" >&2
    GATEWAY_BIN=$GATEWAY_BIN scripts/build-plugins.sh >&2
fi
for b in "$GATEWAY_BIN" "$BIN/mock-upstream" "$BIN/streamgen"; do
    [[ -x $b ]] || { echo "run-streams.sh: $b is missing (drop --no-build?)" >&2; exit 2; }
done
for p in audit-log auth model-rewrite rate-limit; do
    [[ -f $ROOT/target/plugins/$p.wasm ]] || { echo "run-streams.sh: target/plugins/$p.wasm is missing (drop --no-build?)" >&2; exit 2; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-streams.XXXXXX")
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

# --- limits: every open stream holds two sockets in the gateway (client and upstream) and one
# in the mock and in streamgen. The gateway raises its own soft limit to the hard one; the mock
# gets it raised here (streamgen raises its own). Nothing can go past the hard limit.
NPROC=$(nproc)
HARD_NOFILE=$(ulimit -Hn)
SOFT_NOFILE=$(ulimit -Sn)
NEED=$((2 * STREAMS + 256))
LIMIT_NOTE=""
if [[ $HARD_NOFILE != unlimited && $HARD_NOFILE -lt $NEED ]]; then
    LIMIT_NOTE="the open-file hard limit ($HARD_NOFILE) is below the $NEED the gateway needs for $STREAMS streams (two sockets each): at most about $(((HARD_NOFILE - 256) / 2)) can be open at once"
    echo "run-streams.sh: WARNING: $LIMIT_NOTE" >&2
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
MEM_TOTAL=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the mock, in pacing mode
FRAMES=$((SECONDS_ * RATE + 1))
MOCK_PORT=$(free_port)
(ulimit -Sn "$HARD_NOFILE" && exec "$BIN/mock-upstream" --listen "127.0.0.1:$MOCK_PORT" \
    --stream-seconds "$SECONDS_" --events-per-second "$RATE") >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
for _ in $(seq 100); do
    grep -qs listening "$WORK/mock.log" && break
    sleep 0.05
done
grep -q listening "$WORK/mock.log" || { cat "$WORK/mock.log" >&2; echo "run-streams.sh: mock did not start" >&2; exit 1; }
echo "== $(cat "$WORK/mock.log")" >&2

# --- the gateway with the stock plugins
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
while [[ $ADMIN_PORT == "$GW_PORT" ]]; do ADMIN_PORT=$(free_port); done
KEY=sk-gw-bench-streams
CONFIG=$WORK/gateway.toml
PLUGINS=$ROOT/target/plugins
cat >"$CONFIG" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
${GW_THREADS:+threads = $GW_THREADS}

[timeouts]
idle = "30s"

[front_doors.bedrock]
prefix = "/bedrock"

[[backends]]
name = "bench-mock"
kind = "bedrock"
region = "us-east-1"
endpoint = "http://127.0.0.1:$MOCK_PORT"
control_endpoint = "http://127.0.0.1:$MOCK_PORT"
EOF
[[ $PLUGINS_ON == 1 ]] && cat >>"$CONFIG" <<EOF

[audit]
path = "$WORK/audit.log"

[[plugins]]
name = "audit-log"
path = "$PLUGINS/audit-log.wasm"
on_error = "deny"
[plugins.config.prices]
"*sonnet*" = { input = 3.0, output = 15.0, cache_read = 0.3, cache_write = 3.75 }

[[plugins]]
name = "auth"
path = "$PLUGINS/auth.wasm"
on_error = "deny"
[plugins.config]
keys = [{ key = "$KEY", principal = "bench", team = "bench" }]

[[plugins]]
name = "model-rewrite"
path = "$PLUGINS/model-rewrite.wasm"
on_error = "deny"
[[plugins.config.rules]]
match = { model = "*opus*", team = "interns" }
rewrite_to = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
[[plugins.config.rules]]
match = { team = "contractors" }
deny = true

[[plugins]]
name = "rate-limit"
path = "$PLUGINS/rate-limit.wasm"
on_error = "deny"
[[plugins.config.rules]]
per = "principal"
requests_per_minute = 10000000
tokens_per_minute = 100000000000
max_concurrent_streams = 1000000
budget_usd = 100000000.0
[plugins.config.prices]
"*sonnet*" = { input = 3.0, output = 15.0, cache_read = 0.3, cache_write = 3.75 }
EOF

# The gateway keeps the soft limit this shell has: raising it is its own job.
env AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=benchsecret \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/nonexistent \
    AWS_SHARED_CREDENTIALS_FILE=/nonexistent RUST_LOG=warn,gateway::server=info \
    "$GATEWAY_BIN" run --config "$CONFIG" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
ready=0
for _ in $(seq 300); do
    kill -0 "$GW_PID" 2>/dev/null || break
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz" || true)
    if [[ $code == 200 ]]; then ready=1; break; fi
    sleep 0.1
done
if [[ $ready != 1 ]]; then
    echo "run-streams.sh: the gateway did not become ready (GET /readyz on 127.0.0.1:$ADMIN_PORT); config:" >&2
    cat "$CONFIG" >&2
    echo "--- gateway log:" >&2
    tail -n 50 "$WORK/gateway.log" >&2
    exit 1
fi
GW_NOFILE=$(awk '/^Max open files/ {print $4}' "/proc/$GW_PID/limits")
echo "== gateway ready: data 127.0.0.1:$GW_PORT, admin 127.0.0.1:$ADMIN_PORT, pid $GW_PID, open-file limit $GW_NOFILE (this shell: soft $SOFT_NOFILE, hard $HARD_NOFILE)" >&2

# --- the load
WARMUP=20
echo "== streamgen: $STREAMS streams over ${RAMP}s, each $FRAMES frames over ${SECONDS_}s" >&2
FAILED=0
"$BIN/streamgen" --target "http://127.0.0.1:$GW_PORT/bedrock" --streams "$STREAMS" --ramp-s "$RAMP" \
    --expect-events "$FRAMES" --timeout-s $((SECONDS_ + 120)) --gateway-pid "$GW_PID" \
    --warmup "$WARMUP" --probe --header "authorization: Bearer $KEY" --json >"$WORK/streamgen.json" || FAILED=1
[[ -s $WORK/streamgen.json ]] || { echo "run-streams.sh: streamgen reported nothing" >&2; tail -n 30 "$WORK/gateway.log" >&2; exit 1; }
MOCK_CPU=$(awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.1f", ($12 + $13) / hz}' "/proc/$MOCK_PID/stat")

# --- the audit file: one record per request (warm-up, streams, probe), each a 200
EXPECTED=$((STREAMS + WARMUP + 1))
[[ $PLUGINS_ON == 1 ]] || EXPECTED=0
for _ in $(seq 100); do
    [[ $EXPECTED == 0 ]] && break
    [[ -f $WORK/audit.log ]] && [[ $(wc -l <"$WORK/audit.log") -ge $EXPECTED ]] && break
    sleep 0.1
done
AUDIT=$(python3 - "$WORK/audit.log" "$EXPECTED" <<'EOF'
import collections, json, sys
path, expected = sys.argv[1], int(sys.argv[2])
try:
    records = [json.loads(l) for l in open(path) if l.strip()]
except FileNotFoundError:
    records = []
ids = collections.Counter(r["request_id"] for r in records)
ok = sum(1 for r in records if r.get("status") == 200 and r.get("outcome") == "ok")
dups = sum(n - 1 for n in ids.values() if n > 1)
print(json.dumps({"records": len(records), "expected": expected, "ok": ok, "duplicates": dups,
                  "outcomes": collections.Counter(f'{r.get("status")} {r.get("outcome")}' for r in records)}))
EOF
)
AUDIT_OK=$(jq -r 'if .records == .expected and .ok == .expected and .duplicates == 0 then 1 else 0 end' <<<"$AUDIT")
[[ $AUDIT_OK == 1 ]] || FAILED=1

# --- the figures
J=$WORK/streamgen.json
f() { jq -r "$1 // \"-\"" "$J"; }
GROWTH=$(f .growth_per_stream_kib)
OVER=$(python3 -c "import sys; print(1 if sys.argv[1] == '-' or float(sys.argv[1]) > 32 else 0)" "$GROWTH")
MISSED=()
[[ $(f .failed) == 0 ]] || MISSED+=("$(f .failed) failed streams")
[[ $AUDIT_OK == 1 ]] || MISSED+=("audit records missing or not ok")
[[ $OVER == 0 ]] || MISSED+=("$GROWTH KiB per open stream")
VERDICT="met"
if [[ ${#MISSED[@]} -gt 0 ]]; then
    VERDICT="not met: $(IFS=';'; echo "${MISSED[*]}" | sed 's/;/, /g')"
fi
[[ $VERDICT == met ]] || FAILED=1
TABLE=$WORK/table.md
{
    echo "| streams | ok | failed | open at plateau | RSS before | RSS at plateau | growth per open stream | peak RSS | peak growth per stream | gateway CPU to plateau | gateway CPU total | plain invoke at plateau | duration |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| $(f .streams) | $(f .ok) | $(f .failed) | $(f .open_at_plateau) | $(f '.rss_before_kib / 1024 | . * 10 | round / 10') MiB |" \
        "$(f '.rss_plateau_kib / 1024 | . * 10 | round / 10') MiB | **$GROWTH KiB** | $(f '.hwm_kib / 1024 | . * 10 | round / 10') MiB |" \
        "$(f .peak_growth_per_stream_kib) KiB |" \
        "$(f .cpu_to_plateau_s) s | $(f .cpu_total_s) s | $(f .probe_ms) ms | $(f .duration_s) s |"
} >"$TABLE"
PIPELINE="the four stock plugins"
[[ $PLUGINS_ON == 1 ]] || PIPELINE="no plugins (--no-plugins)"
DETAILS="Gateway with $PIPELINE. Each stream: $FRAMES event-stream frames, one every $(python3 -c "print(1/$RATE)") s, ${SECONDS_} s in all; connections opened over ${RAMP} s; plateau (every stream has its response head) reached $(f .plateau_at_s) s after the start and sampled 1 s later, with $(f .open_at_plateau) streams open; gateway open files at the plateau: $(f .fds_plateau) (limit $GW_NOFILE), threads: $(f .threads_plateau). Time to response head p50 / p99 / max: $(f '.head_us.p50 / 1000 | . * 10 | round / 10') / $(f '.head_us.p99 / 1000 | . * 10 | round / 10') / $(f '.head_us.max / 1000 | . * 10 | round / 10') ms. Mock CPU: $MOCK_CPU s. Audit records: $(jq -r '"\(.records) of \(.expected), \(.ok) with 200 ok, \(.duplicates) duplicates"' <<<"$AUDIT")."

echo
cat "$TABLE"
echo
echo "$DETAILS"
jq -r '.errors[]? | "  failed: \(.count) x \(.error)"' "$J"
[[ -n $LIMIT_NOTE ]] && echo "Note: $LIMIT_NOTE."
echo "Target (no failed stream, at most 32 KiB per open stream): $VERDICT."

if [[ $WRITE == 1 ]]; then
    RESULTS=$ROOT/benches/RESULTS.md
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo "none (nothing committed yet)")
    if [[ $GATEWAY_BIN != "$RELEASE/gateway" ]]; then
        commit="$commit, but the gateway binary is $GATEWAY_BIN"
    elif [[ -n $(git status --porcelain -- gateway plugins plugin-sdk Cargo.lock 2>/dev/null) ]]; then
        commit="$commit (with uncommitted changes in gateway/, plugins/ or plugin-sdk/)"
    fi
    cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
    if ! grep -q '^# Concurrent streams' "$RESULTS"; then
        cat >>"$RESULTS" <<'EOF'

# Concurrent streams

```sh
benches/run-streams.sh --write          # 10,000 streams of 60 s, one event a second
```

How many slow streams one gateway holds with the four stock plugins, and what each costs it.
`mock-upstream --stream-seconds S --events-per-second R` answers every
`InvokeModelWithResponseStream` with one event-stream frame every 1/R s for S seconds, like a
model generating tokens, so every stream stays open for its whole answer. The release gateway
runs audit-log (to an `[audit]` file), auth (a static key), model-rewrite and rate-limit (a
per-principal rule with requests, tokens, concurrent-streams and budget limits far above the
load), every plugin with `on_error = "deny"`, `RUST_LOG=warn`. `streamgen` (raw TCP, one
current-thread runtime) sends 20 plain invokes to warm the plugin pools, samples the gateway
(`VmRSS`, `utime + stime`), opens the streams evenly over the ramp and reads each to its end,
checking the status, the chunked framing, every frame's CRCs and payload, the frame count and
the closing `message_stop`: anything else fails the stream. Once every stream has its response
head (all are open), it waits 1 s, samples the gateway again and times one plain invoke on a
fresh connection. Growth per open stream = (RSS at plateau − RSS before) / streams open then;
peak growth = (peak RSS, `VmHWM` at the end − RSS before) / most streams open at once, which also
counts buffers the streams filled after the plateau sample (the target is judged on the first).
The script then checks the audit file: one record per request, each a 200 `ok`.
Mock, gateway and client share the machine's cores (no pinning).

Target: no failed stream, and at most 32 KiB of gateway RSS per open stream.
EOF
    fi
    {
        echo
        echo "## Streams run, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "Commit $commit; $NPROC cores (${cpu:-unknown CPU}), $MEM_TOTAL memory; load average before the run: $LOAD_BEFORE."
        echo
        echo "Command: \`$COMMAND\`."
        echo
        cat "$TABLE"
        echo
        echo "$DETAILS"
        jq -r '.errors[]? | "- failed: \(.count) × `\(.error)`"' "$J"
        [[ -n $LIMIT_NOTE ]] && echo && echo "Note: $LIMIT_NOTE."
        echo
        echo "Target (no failed stream, at most 32 KiB per open stream): **$VERDICT**."
        echo
        echo "<details><summary>raw streamgen output</summary>"
        echo
        echo '```json'
        jq -c . "$J"
        echo '```'
        echo
        echo "</details>"
    } >>"$RESULTS"
    echo "== appended to $RESULTS" >&2
fi

exit $FAILED

#!/usr/bin/env bash
# Measures what the Redis state store costs the stock pipeline, against the in-memory store.
#
# Starts benches' mock-upstream once, then runs these legs one after the other against it:
#   direct  loadgen straight at the mock;
#   nginx   nginx (one worker, on the gateway's core) as a plain reverse proxy, when installed;
#   plain   the release gateway without plugins;
#   memory  the release gateway with the four stock plugins (audit-log to an [audit] file, auth
#           with a static key, model-rewrite, rate-limit with generous limits of every kind and
#           prices), [state] left at its default (memory);
#   redis   the same gateway and plugins with [state] backend = "redis" on a local Redis, under
#           a key prefix of its own (bench-<random>), whose keys are counted and deleted at the end.
# Each leg runs loadgen --kind invoke at 1 connection (latency: p50, p99) and at --connections
# (requests per second at saturation). Prints a markdown table and the Redis-vs-memory difference.
#
#   benches/run-state.sh [--write] [--no-build] [--requests N] [--warmup N]
#                        [--connections C] [--no-pin]
#
#   --write          also append the figures to benches/RESULTS.md
#   --no-build       use the binaries and plugins already built
#   --requests N     timed requests per 1-connection run (default 10000; 3x that at C conns)
#   --warmup N       untimed, checked requests before each run (default 500)
#   --connections C  connections for the saturation runs (default 16; 0 = skip them)
#   --no-pin         do not pin processes to cores with taskset
#
# GATEWAY_BIN overrides the gateway binary (default target/release/gateway), PLUGINS_DIR the
# stock plugins (default target/plugins), BENCHES_BIN the
# directory of mock-upstream and loadgen (default target/release), REDIS_URL the Redis
# (default redis://127.0.0.1:6379; a single node, reached with redis-cli).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMMAND="${GATEWAY_BIN:+GATEWAY_BIN=$GATEWAY_BIN }${BENCHES_BIN:+BENCHES_BIN=$BENCHES_BIN }${REDIS_URL:+REDIS_URL=$REDIS_URL }benches/run-state.sh${*:+ $*}"
NICENESS=$(nice)
[[ $NICENESS != 0 ]] && COMMAND="nice -n $NICENESS env $COMMAND"

WRITE=0 BUILD=1 PIN=1 REQUESTS=10000 WARMUP=500 CONNS=16
while [[ $# -gt 0 ]]; do
    case "$1" in
        --write) WRITE=1 ;;
        --no-build) BUILD=0 ;;
        --no-pin) PIN=0 ;;
        --requests) REQUESTS=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-state.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in jq curl python3 redis-cli; do
    command -v "$tool" >/dev/null || { echo "run-state.sh: needs $tool" >&2; exit 2; }
done

RELEASE=$ROOT/target/release
GATEWAY_BIN=${GATEWAY_BIN:-$RELEASE/gateway}
BIN=${BENCHES_BIN:-$RELEASE}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PLUGINS=${PLUGINS_DIR:-$ROOT/target/plugins}
if [[ $BUILD == 1 ]]; then
    echo "== cargo build --release -p gateway -p gateway-benches" >&2
    cargo build --release -p gateway -p gateway-benches >&2
    echo "== plugins (scripts/build-plugins.sh)" >&2
    GATEWAY_BIN=$GATEWAY_BIN scripts/build-plugins.sh >&2
fi
for b in "$GATEWAY_BIN" "$BIN/mock-upstream" "$BIN/loadgen"; do
    [[ -x $b ]] || { echo "run-state.sh: $b is missing (drop --no-build?)" >&2; exit 2; }
done
for p in audit-log auth model-rewrite rate-limit; do
    [[ -f $PLUGINS/$p.wasm ]] || { echo "run-state.sh: target/plugins/$p.wasm is missing (drop --no-build?)" >&2; exit 2; }
done

rcli() { redis-cli -u "$REDIS_URL" "$@"; }
[[ $(rcli PING 2>&1) == PONG ]] || { echo "run-state.sh: no Redis answers PING at $REDIS_URL (make setup-test starts one)" >&2; exit 2; }
REDIS_VERSION=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')

# Every key this run makes in Redis lives under its own prefix, deleted on the way out.
PREFIX="bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
redis_keys() { rcli --scan --pattern "$PREFIX:*"; }
redis_delete() {
    redis_keys | xargs -r -d '\n' -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-state.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    redis_delete 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- cores, as run-load.sh: the mock and the gateway on different cores; loadgen on a third if
# there is one, else with the mock (the gateway's core stays its own). Redis is the machine's
# own server and is not pinned.
NPROC=$(nproc)
PIN_MOCK=() PIN_GW=() PIN_LOAD=() PINNING="not pinned" GW_THREADS=""
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && [[ $NPROC -ge 2 ]]; then
    load_cpu=0
    [[ $NPROC -ge 3 ]] && load_cpu=2
    PIN_MOCK=(taskset -c 0) PIN_GW=(taskset -c 1) PIN_LOAD=(taskset -c "$load_cpu")
    PINNING="taskset: mock-upstream on CPU 0, gateway on CPU 1, loadgen on CPU $load_cpu, redis-server not pinned"
    GW_THREADS=1
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
# CPU time (all cores) and the part of it stolen by the hypervisor, over the run
cpu_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9}' /proc/stat 2>/dev/null || echo "0 0"; }
TICKS_BEFORE=$(cpu_ticks)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the mock, once for every leg
MOCK_PORT=$(free_port)
"${PIN_MOCK[@]}" "$BIN/mock-upstream" --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    grep -qs listening "$WORK/mock.log" && break
    sleep 0.05
done
grep -q listening "$WORK/mock.log" || { cat "$WORK/mock.log" >&2; echo "run-state.sh: mock did not start" >&2; exit 1; }
echo "== $(cat "$WORK/mock.log")" >&2

KEY=sk-gw-bench-state
FAILED=0
NOTES=()

# write_config LEG -> $WORK/LEG.toml (GW_PORT, ADMIN_PORT set)
write_config() {
    local leg=$1
    cat >"$WORK/$leg.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
${GW_THREADS:+threads = $GW_THREADS}

[front_doors.bedrock]
prefix = "/bedrock"

[[backends]]
name = "bench-mock"
kind = "bedrock"
region = "us-east-1"
endpoint = "http://127.0.0.1:$MOCK_PORT"
control_endpoint = "http://127.0.0.1:$MOCK_PORT"
EOF
    [[ $leg == plain ]] && return
    cat >>"$WORK/$leg.toml" <<EOF

[audit]
path = "$WORK/$leg-audit.log"

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
    if [[ $leg == redis ]]; then
        cat >>"$WORK/$leg.toml" <<EOF

[state]
backend = "redis"
url = "$REDIS_URL"
key_prefix = "$PREFIX"
EOF
    fi
}

# start_gateway LEG: a gateway on fresh ports, ready (GW_PID, GW_PORT, ADMIN_PORT set)
start_gateway() {
    local leg=$1 ready=0 code
    GW_PORT=$(free_port)
    ADMIN_PORT=$(free_port)
    while [[ $ADMIN_PORT == "$GW_PORT" ]]; do ADMIN_PORT=$(free_port); done
    write_config "$leg"
    env AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=benchsecret \
        AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/nonexistent \
        AWS_SHARED_CREDENTIALS_FILE=/nonexistent RUST_LOG=warn \
        "${PIN_GW[@]}" "$GATEWAY_BIN" run --config "$WORK/$leg.toml" >"$WORK/$leg-gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    for _ in $(seq 300); do
        kill -0 "$GW_PID" 2>/dev/null || break
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz" || true)
        if [[ $code == 200 ]]; then ready=1; break; fi
        sleep 0.1
    done
    if [[ $ready != 1 ]]; then
        echo "run-state.sh: the $leg gateway did not become ready (GET /readyz on 127.0.0.1:$ADMIN_PORT); config:" >&2
        cat "$WORK/$leg.toml" >&2
        echo "--- gateway log:" >&2
        tail -n 50 "$WORK/$leg-gateway.log" >&2
        exit 1
    fi
    echo "== $leg gateway ready: data 127.0.0.1:$GW_PORT, admin 127.0.0.1:$ADMIN_PORT, pid $GW_PID ($PINNING${GW_THREADS:+, gateway threads = $GW_THREADS})" >&2
}

# stop_gateway: SIGTERM, and wait for the drain (every audit record written and synced)
stop_gateway() {
    local pid rest=()
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$GW_PID" ]] || rest+=("$pid")
    done
    PIDS=("${rest[@]}")
}

# check_store LEG WHEN: /status's state store is the leg's backend, healthy, without incidents
check_store() {
    local leg=$1 when=$2 state
    state=$(curl -s "http://127.0.0.1:$ADMIN_PORT/status" | jq -c '.state // empty' || true)
    echo "== $leg gateway /status state ($when): ${state:-none}" >&2
    if ! jq -e --arg b "$leg" '.backend == $b and .healthy == true and (.incidents // 0) == 0' \
        <<<"${state:-null}" >/dev/null 2>&1; then
        FAILED=1
        NOTES+=("the $leg gateway's /status state $when was ${state:-missing}, not $leg, healthy, without incidents")
        echo "run-state.sh: ${NOTES[-1]}" >&2
    fi
    echo "$state" >"$WORK/$leg-state-$when.json"
}

# check_audit LEG EXPECTED: one record per request, each a 200 ok (after the gateway stopped)
check_audit() {
    local leg=$1 expected=$2 audit
    audit=$(python3 - "$WORK/$leg-audit.log" "$expected" <<'EOF'
import collections, json, sys
path, expected = sys.argv[1], int(sys.argv[2])
try:
    records = [json.loads(l) for l in open(path) if l.strip()]
except FileNotFoundError:
    records = []
ok = sum(1 for r in records if r.get("status") == 200 and r.get("outcome") == "ok")
print(json.dumps({"records": len(records), "expected": expected, "ok": ok,
                  "outcomes": collections.Counter(f'{r.get("status")} {r.get("outcome")}' for r in records)}))
EOF
)
    echo "== $leg audit file: $audit" >&2
    if [[ $(jq -r 'if .records == .expected and .ok == .expected then 1 else 0 end' <<<"$audit") != 1 ]]; then
        FAILED=1
        NOTES+=("$leg: audit records $(jq -r '"\(.records) of \(.expected), \(.ok) with 200 ok"' <<<"$audit")")
    fi
    AUDIT_SUMMARY+=("$leg $(jq -r '"\(.records) of \(.expected), \(.ok) with 200 ok"' <<<"$audit")")
}

# load LEG CONNS REQUESTS TARGET [HEADER] -> $WORK/LEG-CONNS.json
load() {
    local leg=$1 conns=$2 n=$3 target=$4 header=${5:-}
    local extra=()
    [[ -n $header ]] && extra=(--header "$header")
    echo "== loadgen invoke x$n, $conns connection(s), $leg: $target" >&2
    if ! "${PIN_LOAD[@]}" "$BIN/loadgen" --target "$target" --kind invoke --connections "$conns" \
        --requests "$n" --warmup "$WARMUP" "${extra[@]}" --json >"$WORK/$leg-$conns.json"; then
        FAILED=1
        NOTES+=("loadgen reported errors on the $leg leg at $conns connection(s)")
        echo "run-state.sh: loadgen reported errors:" >&2
        jq -r '.first_errors[]?' "$WORK/$leg-$conns.json" >&2 || cat "$WORK/$leg-$conns.json" >&2
    fi
}

CONN_SET=(1)
[[ $CONNS != 0 ]] && CONN_SET+=("$CONNS")
run_leg() {
    local leg=$1 target=$2 header=${3:-} conns n
    for conns in "${CONN_SET[@]}"; do
        n=$REQUESTS
        [[ $conns -gt 1 ]] && n=$((REQUESTS * 3))
        load "$leg" "$conns" "$n" "$target" "$header"
        # the store's incidents so far (a gateway leg): which run had them
        [[ $leg == direct || $leg == nginx ]] || curl -s "http://127.0.0.1:$ADMIN_PORT/status" \
            | jq -r '.state.incidents // "-"' >"$WORK/$leg-$conns.incidents" 2>/dev/null || true
    done
}
incidents() { cat "$WORK/$1-$2.incidents" 2>/dev/null || echo -; }
EXPECTED_RECORDS=$((WARMUP + REQUESTS))
[[ $CONNS != 0 ]] && EXPECTED_RECORDS=$((EXPECTED_RECORDS + WARMUP + REQUESTS * 3))
AUDIT_SUMMARY=()

# --- leg 1: direct
run_leg direct "http://127.0.0.1:$MOCK_PORT"

# --- nginx as a plain reverse proxy (the floor for any proxy), on the gateway's core, one worker
NGINX_LEG=0
if command -v nginx >/dev/null; then
    NGINX_PORT=$(free_port)
    cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /bedrock/ {
            proxy_pass http://mock/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    "${PIN_GW[@]}" nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break
        sleep 0.05
    done
    run_leg nginx "http://127.0.0.1:$NGINX_PORT/bedrock"
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_LEG=1
else
    echo "run-state.sh: nginx is not installed: no nginx leg (apt-get install nginx-light)" >&2
fi

# --- the gateway without plugins
start_gateway plain
run_leg plain "http://127.0.0.1:$GW_PORT/bedrock"
stop_gateway

# --- leg 2: memory store
start_gateway memory
check_store memory before
run_leg memory "http://127.0.0.1:$GW_PORT/bedrock" "authorization: Bearer $KEY"
check_store memory after
stop_gateway
check_audit memory "$EXPECTED_RECORDS"

# --- leg 3: Redis store (after the memory gateway is gone; same mock)
start_gateway redis
check_store redis before
run_leg redis "http://127.0.0.1:$GW_PORT/bedrock" "authorization: Bearer $KEY"
check_store redis after
stop_gateway
check_audit redis "$EXPECTED_RECORDS"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
STEAL=$(python3 -c "import sys; t0, s0 = map(int, sys.argv[1].split()); t1, s1 = map(int, sys.argv[2].split()); print(f'{100 * (s1 - s0) / max(t1 - t0, 1):.1f} %')" "$TICKS_BEFORE" "$(cpu_ticks)" 2>/dev/null || echo unknown)

# --- the keys the redis leg made: counted (all, and the rate-limit plugin's), then deleted
redis_keys >"$WORK/redis-keys.txt"
KEYS_TOTAL=$(wc -l <"$WORK/redis-keys.txt")
KEYS_RL=$(grep -c "^$PREFIX:{rate-limit:" "$WORK/redis-keys.txt" || true)
echo "== Redis keys under $PREFIX: $KEYS_TOTAL, $KEYS_RL of them rate-limit's:" >&2
sed 's/^/   /' "$WORK/redis-keys.txt" | head -n 20 >&2
if [[ $KEYS_RL -eq 0 ]]; then
    FAILED=1
    NOTES+=("no rate-limit key appeared in Redis under $PREFIX: the redis leg did not use Redis")
    echo "run-state.sh: ${NOTES[-1]}" >&2
fi
redis_delete
KEYS_LEFT=$(redis_keys | wc -l)
echo "== deleted them; $KEYS_LEFT left" >&2
# Redis's slow log (commands over slowlog-log-slower-than, shared by every client): the entries on
# this run's keys, if the log still holds them
SLOW=$(rcli --json SLOWLOG GET 128 2>/dev/null | jq -r --arg p "$PREFIX:" \
    '[.[] | select(any(.[3][]; startswith($p))) | .[2]] | if length == 0 then "none" else "\(length), the slowest \((max / 100 | round) / 10) ms" end' 2>/dev/null || echo unknown)
SLOW_MIN=$(rcli CONFIG GET slowlog-log-slower-than 2>/dev/null | sed -n 2p)
STORE_LOG=$(grep -c 'state store' "$WORK/redis-gateway.log" || true)
echo "== Redis slow log entries on this run's keys (over ${SLOW_MIN:-?} µs): $SLOW; gateway log lines on the state store: $STORE_LOG" >&2
grep 'state store' "$WORK/redis-gateway.log" | head -n 6 >&2 || true

# --- the table
field() { jq -r "$1 // \"-\" | if type == \"number\" then (. * 10 | round / 10 | tostring) else . end" "$2" 2>/dev/null || echo -; }
diff_us() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):+.1f}')" "$1" "$2" 2>/dev/null || echo -; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[2]) / float(sys.argv[1]):.3f}')" "$1" "$2" 2>/dev/null || echo -; }
C1=$WORK/direct-1.json
TABLE=$WORK/table.md
{
    echo "| leg | p50 at 1 conn | p99 at 1 conn | added p50 vs direct | added p99 vs direct | req/s at $CONNS conns | errors (1 / $CONNS conns) |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    LEGS=(direct)
    [[ $NGINX_LEG == 1 ]] && LEGS+=(nginx)
    LEGS+=(plain memory redis)
    for leg in "${LEGS[@]}"; do
        one=$WORK/$leg-1.json many=$WORK/$leg-$CONNS.json
        p50=$(field .total_us.p50 "$one") p99=$(field .total_us.p99 "$one")
        added50="—" added99="—"
        if [[ $leg != direct ]]; then
            added50="$(diff_us "$(field .total_us.p50 "$C1")" "$p50") µs"
            added99="$(diff_us "$(field .total_us.p99 "$C1")" "$p99") µs"
        fi
        rps=- errs_many=-
        if [[ $CONNS != 0 ]]; then
            rps=$(field .rps "$many") errs_many=$(field .errors "$many")
        fi
        label=$leg
        case $leg in
            direct) label="direct (mock)" ;;
            nginx) label="nginx reverse proxy (1 worker)" ;;
            plain) label="gateway, no plugins" ;;
            memory) label="gateway, stock plugins, memory store" ;;
            redis) label="gateway, stock plugins, Redis store" ;;
        esac
        echo "| $label | $p50 µs | $p99 µs | $added50 | $added99 | $rps | $(field .errors "$one") / $errs_many |"
    done
} >"$TABLE"
M1=$WORK/memory-1.json R1=$WORK/redis-1.json
RPS_RATIO=-
[[ $CONNS != 0 ]] && RPS_RATIO=$(ratio "$(field .rps "$WORK/memory-$CONNS.json")" "$(field .rps "$WORK/redis-$CONNS.json")")
HEADLINE="Redis vs memory: $(diff_us "$(field .total_us.p50 "$M1")" "$(field .total_us.p50 "$R1")") µs p50, $(diff_us "$(field .total_us.p99 "$M1")" "$(field .total_us.p99 "$R1")") µs p99 per request; req/s ratio $RPS_RATIO (Redis / memory, at $CONNS connections)."
if [[ $CONNS != 0 ]]; then
    PLAIN_RPS=$(field .rps "$WORK/plain-$CONNS.json") MEM_RPS=$(field .rps "$WORK/memory-$CONNS.json")
    RATIOS="Requests per second at $CONNS connections: stock plugins / no plugins $(ratio "$PLAIN_RPS" "$MEM_RPS")"
    if [[ $NGINX_LEG == 1 ]]; then
        NG_RPS=$(field .rps "$WORK/nginx-$CONNS.json")
        RATIOS="$RATIOS; gateway without plugins / nginx $(ratio "$NG_RPS" "$PLAIN_RPS"); with the stock plugins / nginx $(ratio "$NG_RPS" "$MEM_RPS") (memory store), $(ratio "$NG_RPS" "$(field .rps "$WORK/redis-$CONNS.json")") (Redis store)"
    fi
    HEADLINE="$HEADLINE
$RATIOS."
fi
INCIDENTS_LINE="Redis store incidents (Redis did not answer within the 50 ms \`timeout\`; the gateway then counts in memory until its probe finds Redis again): $(incidents redis 1) after the 1-connection run"
[[ $CONNS != 0 ]] && INCIDENTS_LINE="$INCIDENTS_LINE, $(incidents redis "$CONNS") after the $CONNS-connection run (cumulative)"
INCIDENTS_LINE="$INCIDENTS_LINE; Redis slow-log entries on this run's keys (over ${SLOW_MIN:-?} µs): $SLOW; gateway log lines on the state store: $STORE_LOG."
KEYS_LINE="Redis leg: /status state \`$(cat "$WORK/redis-state-after.json" 2>/dev/null || echo none)\` after the load; $KEYS_TOTAL keys under \`$PREFIX:\` at the end ($KEYS_RL of them rate-limit's), deleted ($KEYS_LEFT left). Audit records: $(IFS=';'; echo "${AUDIT_SUMMARY[*]}" | sed 's/;/; /g')."

echo
cat "$TABLE"
echo
echo "$HEADLINE"
echo "$INCIDENTS_LINE"
echo "$KEYS_LINE"
echo "Redis $REDIS_VERSION at $REDIS_URL. $PINNING. Load average before: $LOAD_BEFORE, after: $LOAD_AFTER; CPU time stolen by the hypervisor during the run: $STEAL."
for n in "${NOTES[@]}"; do echo "Problem: $n"; done

if [[ $WRITE == 1 ]]; then
    RESULTS=$ROOT/benches/RESULTS.md
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo "none (nothing committed yet)")
    if [[ $GATEWAY_BIN != "$RELEASE/gateway" ]]; then
        commit="$commit, but the gateway binary is $GATEWAY_BIN"
    elif [[ -n $(git status --porcelain -- gateway plugins plugin-sdk Cargo.lock 2>/dev/null) ]]; then
        commit="$commit (with uncommitted changes in gateway/, plugins/ or plugin-sdk/)"
    fi
    cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)
    busy=$(python3 -c "import sys; print(1 if float(sys.argv[1].split()[0]) > 0.5 * int(sys.argv[2]) else 0)" "$LOAD_BEFORE" "$NPROC" 2>/dev/null || echo 0)
    if ! grep -q '^# State store: Redis against memory' "$RESULTS"; then
        cat >>"$RESULTS" <<'EOF'

# State store: Redis against memory

```sh
benches/run-state.sh --write
```

What the stock pipeline's shared state costs when it lives in Redis (`[state] backend =
"redis"`) rather than in the gateway's memory. One `mock-upstream` serves three legs run one
after the other: **direct** (loadgen at the mock), **memory** (the release gateway with the four
stock plugins: audit-log to an `[audit]` file, auth with a static key, model-rewrite, and
rate-limit with one per-principal rule setting `requests_per_minute`, `tokens_per_minute`,
`max_concurrent_streams` and `budget_usd` far above the load, plus prices; every plugin
`on_error = "deny"`, `RUST_LOG=warn`) and **redis** (the same configuration plus `[state]
backend = "redis"` on the machine's Redis at `127.0.0.1:6379`, with a `key_prefix` of its own
per run). Each leg is `loadgen --kind invoke` (2 KiB `InvokeModel`, the gateway legs with
`authorization: Bearer <key>`) at 1 connection (p50, p99) and at 16 connections (requests per
second at saturation). Pinning as in the load run above: the mock on CPU 0, the gateway on
CPU 1 with `threads = 1`, loadgen on CPU 2 (with the mock on CPU 0 when there are only 2 cores);
the Redis server is the machine's own and is not pinned.
**added** = leg minus direct, per percentile. The script checks the redis gateway's `/status`
(`state.backend = "redis"`, healthy, no incidents) before and after the load, counts the keys
under the run's prefix (the rate-limit plugin's must be there), deletes them, and checks one
audit record per request, each a 200 `ok`.
EOF
    fi
    {
        echo
        echo "## State store run, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "Commit $commit; $NPROC cores (${cpu:-unknown CPU}); Redis $REDIS_VERSION;" \
            "load average before the run: $LOAD_BEFORE, after: $LOAD_AFTER; CPU time stolen by the hypervisor during the run: $STEAL."
        if [[ $busy == 1 ]]; then
            echo "The machine was busy (load average above half its cores, shared with builds): the figures are noisier than on an idle machine."
        fi
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
        echo "$HEADLINE"
        echo
        echo "$INCIDENTS_LINE"
        echo
        echo "$KEYS_LINE"
        for n in "${NOTES[@]}"; do echo; echo "Problem: $n."; done
        echo
        echo "<details><summary>raw loadgen output</summary>"
        echo
        echo '```json'
        for leg in direct memory redis; do
            for conns in "${CONN_SET[@]}"; do
                jq -c --arg leg "$leg" '{leg: $leg} + .' "$WORK/$leg-$conns.json"
            done
        done
        echo '```'
        echo
        echo "</details>"
    } >>"$RESULTS"
    echo "== appended to $RESULTS" >&2
fi

exit $FAILED

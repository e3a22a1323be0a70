#!/usr/bin/env bash
# Rookery benchmark suite: the one command.
#
#   bench/run.sh            full run (~18 min): every P-row of targets.md
#   bench/run.sh --quick    smoke run (~3 min): short durations, smaller P7/P8 sizes; its
#                           results stay in bench/.work/run-*/results/
#   bench/run.sh --profile  also profile the one-process server (perf cpu-clock sampling and
#                           valgrind --tool=callgrind on a short run); adds ~2 min
#
# Builds release binaries, starts every server it needs on loopback (servers pinned to core 0,
# load generators to core 1 with taskset), runs each scenario for a bounded time, stops
# everything (also on Ctrl-C or error), and prints one table. Results: bench/results/latest.json,
# table.md, plot.svg (and profile-*.txt with --profile); the working files and logs of a run are
# in bench/.work/run-*/.
# See BENCHMARKS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0
PROFILE=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --profile) PROFILE=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done

if [[ $QUICK == 1 ]]; then
  DUR=3; WARMUP=1
  P7_SIZES=(2000 5000)
  P8_USERS=1000
  PINUS_CONNS=(100 1000)
  HOLD=4
else
  DUR=10; WARMUP=2
  P7_SIZES=(10000 50000)
  P8_USERS=5000
  PINUS_CONNS=(100 1000 10000)
  HOLD=8
fi
CONNS_SWEEP=(1 100 1000 10000)
MAIN_CONNS=1000          # P2, P3, P4, P5, P6 workload: 1,000 connections, closed loop
RPC_CONC=128             # P9: callers in flight
PAYLOAD='{"data":"0123456789abcdef0123456789abcdef0123456789abcdefghijk"}'   # 64 bytes
ROUTE=room.room.echo
CONNECT_RATE=10000
SOURCE_IPS=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9

WORK=bench/.work
RUN_DIR=$WORK/run-$(date +%Y%m%d-%H%M%S)
# A full run replaces the committed results; a quick (smoke) run keeps its own in the run's
# directory.
RESULTS=bench/results
[[ $QUICK == 1 ]] && RESULTS=$RUN_DIR/results
mkdir -p "$RUN_DIR" "$RESULTS"
ROWS=$RUN_DIR/rows.jsonl
: > "$ROWS"
REPORT=(python3 bench/report.py)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------------------------------------
# Processes: every server runs in its own process group (setsid), so that it and its children
# (pinus forks its servers) are stopped together; load generators are tracked by pid.
SERVER_GROUPS=()
CLIENT_PIDS=()

stop_group() {
  local g=$1 i
  kill -0 -- "-$g" 2>/dev/null || return 0
  kill -TERM -- "-$g" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 -- "-$g" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$g" 2>/dev/null || true
}

# pinus servers started from this run's scratch copy (by their command line).
pinus_children() {
  ps -eo pid=,args= | awk -v app="$ROOT/$WORK/pinus/app.js" '$2 ~ /node$/ && $3 == app {print $1}'
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p g
  for p in "${CLIENT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for g in "${SERVER_GROUPS[@]}"; do stop_group "$g"; done
  # pinus children that were not yet tracked when the run stopped.
  for p in $(pinus_children); do kill -TERM "$p" 2>/dev/null || true; done
  exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
  SRV=(taskset -c 0)
  GEN=(taskset -c 1)
  PINNED=1
else
  SRV=()
  GEN=()
  PINNED=0
  log "taskset missing or fewer than 2 cores: servers and load generators run UNPINNED"
fi

# start_server NAME CMD...: starts CMD pinned to the server core in a new process group;
# sets LAST_PID (= its process group id).
start_server() {
  local name=$1; shift
  setsid "${SRV[@]}" "$@" > "$RUN_DIR/$name.log" 2>&1 < /dev/null &
  LAST_PID=$!
  SERVER_GROUPS+=("$LAST_PID")
  # The group exists once the child has run setsid: wait for it, so that "no such group"
  # later means "exited".
  local i
  for i in $(seq 1 250); do
    kill -0 -- "-$LAST_PID" 2>/dev/null && return 0
    kill -0 "$LAST_PID" 2>/dev/null || return 0
    sleep 0.02
  done
}

stop_server() {
  local g=$1 x keep=()
  stop_group "$g"
  for x in "${SERVER_GROUPS[@]}"; do [[ $x == "$g" ]] || keep+=("$x"); done
  SERVER_GROUPS=("${keep[@]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT [SECONDS] [PGID]: until something listens on 127.0.0.1:PORT.
wait_port() {
  local port=$1 secs=${2:-20} g=${3:-} i
  for i in $(seq 1 $((secs * 10))); do
    port_open "$port" && return 0
    if [[ -n $g ]] && ! kill -0 -- "-$g" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Sum of utime+stime (clock ticks) of every process in the given process groups.
group_ticks() {
  local total=0 g p t
  for g in "$@"; do
    for p in $(ps -eo pid=,pgid= | awk -v g="$g" '$2==g {print $1}'); do
      t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') || t=0
      total=$((total + ${t:-0}))
    done
  done
  echo "$total"
}
pid_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12+$13}' || echo 0; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }
CLK_TCK=$(getconf CLK_TCK)

# Busy clock ticks of the whole machine (all CPUs): user+nice+system+irq+softirq+steal.
sys_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# cpu_begin PGIDS... / cpu_end: CPU ticks of the server groups, of the load generator
# ($CPU_GEN) and of the whole machine over an interval; cpu_end prints
# "server_cpu_s gen_cpu_s interval_s machine_cpu_s" (machine minus the two = everything else:
# kernel work for loopback traffic charged to no process, and other users of the machine).
cpu_begin() {
  CPU_GROUPS=("$@")
  CPU_S0=$(group_ticks "$@"); CPU_G0=$(pid_ticks "$CPU_GEN"); CPU_M0=$(sys_ticks); CPU_T0=$(now)
}
cpu_end() {
  local s1 g1 m1 t1
  s1=$(group_ticks "${CPU_GROUPS[@]}"); g1=$(pid_ticks "$CPU_GEN"); m1=$(sys_ticks); t1=$(now)
  python3 -c "print(($s1-$CPU_S0)/$CLK_TCK, (${g1:-0}-${CPU_G0:-0})/$CLK_TCK, $t1-$CPU_T0, ($m1-$CPU_M0)/$CLK_TCK)"
}

# sample_cpu START_DELAY LENGTH GEN_PID PGIDS...: after START_DELAY seconds, measures CPU over
# LENGTH seconds (see cpu_end).
sample_cpu() {
  local d0=$1 len=$2
  CPU_GEN=$3; shift 3
  sleep "$d0"
  cpu_begin "$@"
  sleep "$len"
  cpu_end
}

# Schedule of a closed/open-loop run: the sampled interval lies inside warm-up + window even
# when the connect phase is off the estimate by up to WARMUP/2 + DUR/10.
sample_window() { # CONNECTIONS -> "delay length"
  python3 -c "c=$1; est=c/$CONNECT_RATE+0.3; print(round(est+$WARMUP*0.5+$DUR*0.1,2), round($DUR*0.8,2))"
}

# bench_row ID GROUP "PGIDS" CONNECTIONS [bench args...]: one `rookery bench` run, recorded.
bench_row_once() {
  local id=$1 group=$2 pgids=$3 conns=$4; shift 4
  local out=$RUN_DIR/$id.json extra=()
  if [[ $conns -ge 1000 ]]; then extra+=(--source-ips "$SOURCE_IPS"); fi
  log "run $id: $conns connections $*"
  "${GEN[@]}" "$ROOKERY" bench --json --no-progress --connections "$conns" \
    --duration "$DUR" --warmup "$WARMUP" --connect-rate "$CONNECT_RATE" \
    --payload "$PAYLOAD" "${extra[@]}" "$@" > "$out" 2> "$RUN_DIR/$id.err" &
  local bpid=$!
  CLIENT_PIDS+=("$bpid")
  local win cpu
  win=$(sample_window "$conns")
  # shellcheck disable=SC2086
  cpu=$(sample_cpu $win "$bpid" $pgids)
  wait "$bpid" || log "  $id: load generator exited with an error (see $RUN_DIR/$id.err)"
  "${REPORT[@]}" add "$ROWS" "$id" "$group" "$out" connections="$conns" cpu="$cpu"
}

# rpc_row ID GROUP "PGIDS" MODE [rpcbench run args...]
rpc_row_once() {
  local id=$1 group=$2 pgids=$3 mode=$4; shift 4
  local out=$RUN_DIR/$id.json
  log "run $id: rpcbench $mode $*"
  "${GEN[@]}" "$RPCBENCH" run "$mode" --duration "$DUR" --warmup "$WARMUP" \
    --payload "$PAYLOAD" "$@" > "$out" 2> "$RUN_DIR/$id.err" &
  local bpid=$!
  CLIENT_PIDS+=("$bpid")
  local cpu
  # shellcheck disable=SC2086
  cpu=$(sample_cpu "$(python3 -c "print(0.3+$WARMUP*0.5)")" "$(python3 -c "print($DUR*0.7)")" "$bpid" $pgids)
  wait "$bpid" || log "  $id: rpcbench exited with an error (see $RUN_DIR/$id.err)"
  "${REPORT[@]}" add "$ROWS" "$id" "$group" "$out" cpu="$cpu"
}

# fanout_row ID GROUP "PGIDS" [rpcbench fanout args...]: CPU sampled over the window the
# driver announces on stderr.
fanout_row_once() {
  local id=$1 group=$2 pgids=$3; shift 3
  local out=$RUN_DIR/$id.json err=$RUN_DIR/$id.err
  log "run $id: fanout $*"
  "${GEN[@]}" "$RPCBENCH" fanout --duration "$DUR" --warmup "$WARMUP" "$@" > "$out" 2> "$err" &
  local bpid=$!
  CLIENT_PIDS+=("$bpid")
  local i cpu=""
  for i in $(seq 1 1200); do
    grep -q "window start" "$err" 2>/dev/null && break
    kill -0 "$bpid" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q "window start" "$err" 2>/dev/null; then
    CPU_GEN=$bpid
    # shellcheck disable=SC2086
    cpu_begin $pgids
    sleep "$(python3 -c "print($DUR*0.9)")"
    cpu=$(cpu_end)
  fi
  wait "$bpid" || log "  $id: fanout exited with an error (see $err)"
  "${REPORT[@]}" add "$ROWS" "$id" "$group" "$out" cpu="$cpu"
}

# Busy cores of the machine over 2 s.
busy_cores() {
  local m0 m1
  m0=$(sys_ticks); sleep 2; m1=$(sys_ticks)
  python3 -c "print(round(($m1-$m0)/$CLK_TCK/2, 2))"
}

# wait_quiet SECONDS: until the machine is quiet (<= 0.3 cores busy), at most SECONDS.
wait_quiet() {
  local end=$((SECONDS + $1)) b
  while :; do
    b=$(busy_cores)
    python3 -c "import sys; sys.exit(0 if $b <= 0.3 else 1)" && return 0
    [[ $SECONDS -ge $end ]] && { log "  machine still busy ($b cores) after $1 s; going on"; return 0; }
    sleep 3
  done
}

# A row whose interval saw more than NOISY cores of CPU used by neither the servers nor the
# load generator (other work on the machine) is run again, after waiting for quiet, up to twice;
# the attempt with the least outside load is kept. At most RETRIES re-runs per suite run, to
# bound its length.
NOISY=0.25
RETRIES=12
with_retry() { # ID FUNCTION ARGS...
  local id=$1; shift
  "$@"
  local other attempt
  for attempt in 1 2; do
    other=$("${REPORT[@]}" get "$ROWS" "$id" other_cpu_cores)
    python3 -c "import sys; sys.exit(0 if float('${other:-0}') > $NOISY else 1)" || break
    [[ $RETRIES -gt 0 ]] || break
    RETRIES=$((RETRIES - 1))
    log "  $id: $other cores busy outside the benchmark: waiting for quiet and running it again"
    wait_quiet 90
    "$@"
  done
  "${REPORT[@]}" keep-quietest "$ROWS" "$id"
}
# protobench_row ID GROUP "PGIDS" CONNS [protobench args...]: one generator for every client
# protocol (pomelo TCP, KCP, MQTT, MQTT through a broker), so their figures compare.
protobench_row_once() {
  local id=$1 group=$2 pgids=$3 conns=$4; shift 4
  local out=$RUN_DIR/$id.json
  log "run $id: protobench $conns connections $*"
  "${GEN[@]}" "$PROTOBENCH" --connections "$conns" --duration "$DUR" --warmup "$WARMUP" \
    --connect-rate "$CONNECT_RATE" --payload "$PAYLOAD" "$@" > "$out" 2> "$RUN_DIR/$id.err" &
  local bpid=$!
  CLIENT_PIDS+=("$bpid")
  local win cpu
  win=$(sample_window "$conns")
  # shellcheck disable=SC2086
  cpu=$(sample_cpu $win "$bpid" $pgids)
  wait "$bpid" || log "  $id: protobench exited with an error (see $RUN_DIR/$id.err)"
  "${REPORT[@]}" add "$ROWS" "$id" "$group" "$out" connections="$conns" cpu="$cpu"
}
protobench_row() { with_retry "$1" protobench_row_once "$@"; }
bench_row() { with_retry "$1" bench_row_once "$@"; }
rpc_row() { with_retry "$1" rpc_row_once "$@"; }
fanout_row() { with_retry "$1" fanout_row_once "$@"; }

unavailable() { # ID GROUP REASON
  log "  $1: unavailable: $3"
  "${REPORT[@]}" unavailable "$ROWS" "$1" "$2" "$3"
}

# Max req/s of a recorded row, for the open-loop runs at 50% of it.
row_rps() { "${REPORT[@]}" get "$ROWS" "$1" rps; }

# ------------------------------------------------------------------------------------------
# Limits, build, tools.

HARD_NOFILE=$(ulimit -Hn)
if [[ $HARD_NOFILE == unlimited ]]; then HARD_NOFILE=1048576; fi
WANT_NOFILE=120000
if [[ $HARD_NOFILE -lt $WANT_NOFILE ]]; then
  # Try to raise the hard limit (needs CAP_SYS_RESOURCE); keep what we have otherwise.
  ulimit -Hn "$WANT_NOFILE" 2>/dev/null && HARD_NOFILE=$WANT_NOFILE || true
fi
ulimit -n "$HARD_NOFILE" 2>/dev/null || true
NOFILE=$(ulimit -n)
log "open files limit: $NOFILE"

# Fixed loopback ports of the suite (static cluster configs, pinus servers.json).
FIXED_PORTS=(3400 3410 3411 3412 3413 3415 3420 3422 3423 3424 3425 3430 3432 3435 3436 3440 3441 3460 3465 3466 3467)
for p in "${FIXED_PORTS[@]}"; do
  if port_open "$p"; then
    echo "port 127.0.0.1:$p is in use; the suite needs ports ${FIXED_PORTS[*]} free" >&2
    exit 1
  fi
done

log "building release binaries"
cargo build --release --bin rookery --bin rookery-ceiling --bin rookery-rpcbench \
  --bin rookery-protobench 2>&1 | tail -n 3 >&2
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
ROOKERY=$TARGET_DIR/release/rookery
CEILING=$TARGET_DIR/release/rookery-ceiling
RPCBENCH=$TARGET_DIR/release/rookery-rpcbench
PROTOBENCH=$TARGET_DIR/release/rookery-protobench

export RUST_LOG=warn
export ROOKERY_GATEWAY__RATE_LIMIT__PER_SECOND=0

# Other work on the machine skews every figure: wait (bounded) until it is quiet, and record
# how busy it was.
BUSY=$(busy_cores)
for i in $(seq 1 36); do
  python3 -c "import sys; sys.exit(0 if $BUSY <= 0.3 else 1)" && break
  [[ $i == 1 ]] && log "the machine is busy ($BUSY cores used by other processes); waiting up to 3 min for it to calm down"
  sleep 3
  BUSY=$(busy_cores)
done
log "background load before the run: $BUSY cores busy; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

"${REPORT[@]}" meta "$RUN_DIR/meta.json" background_busy_cores="$BUSY" loadavg="$(cut -d' ' -f1-3 /proc/loadavg)" quick=$QUICK pinned=$PINNED duration=$DUR \
  warmup=$WARMUP nofile="$NOFILE" payload="$PAYLOAD" route=$ROUTE main_connections=$MAIN_CONNS \
  rpc_concurrency=$RPC_CONC connect_rate=$CONNECT_RATE

# pinus: installed into a scratch directory in the background while the Rust rows run.
PINUS_DIR=$WORK/pinus
PINUS_STATUS=$RUN_DIR/pinus-install.status
(
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm not found" > "$PINUS_STATUS"; exit 0
  fi
  mkdir -p "$PINUS_DIR"
  cp -r bench/pinus/. "$PINUS_DIR/"
  if (cd "$PINUS_DIR" && timeout 300 npm install --no-audit --no-fund --omit=dev) \
      > "$RUN_DIR/pinus-install.log" 2>&1; then
    echo ok > "$PINUS_STATUS"
  else
    echo "npm install failed (see $RUN_DIR/pinus-install.log)" > "$PINUS_STATUS"
  fi
) &
PINUS_INSTALL_PID=$!
CLIENT_PIDS+=("$PINUS_INSTALL_PID")

# ------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------
# P2, P10, P6 (one process).
# The server's global queue interval for the rows "with a fair schedule" (see BENCHMARKS.md).
FAIR_GQI=4
p10_pairs() { # PREFIX PID: 100 and 10,000 connections in alternation, twice, on server PID
  local i c
  for i in 1 2; do
    for c in 100 10000; do
      bench_row "$1-c$c-$i" rookery "$2" "$c" --addr 127.0.0.1:3410 --route "$ROUTE"
    done
  done
}
start_server single "$ROOKERY" serve --config bench/configs/single.toml
SINGLE=$LAST_PID
if wait_port 3410 30 "$SINGLE"; then
  for c in "${CONNS_SWEEP[@]}"; do
    bench_row "p2-c$c" rookery "$SINGLE" "$c" --addr 127.0.0.1:3410 --route "$ROUTE"
  done
  # P10's verdict: 100 and 10,000 connections in alternation on this server, warmed by the rows
  # above (fresh processes at 10,000 connections measured 14-15 us of CPU per request against
  # 10.7 us for this one in the same run: a new process first grows its memory).
  p10_pairs p10pair "$SINGLE"
  MAX=$(row_rps p2-c$MAIN_CONNS)
  RATE=$(python3 -c "print(round($MAX*0.5))")
  bench_row p6-single rookery-open "$SINGLE" "$MAIN_CONNS" --addr 127.0.0.1:3410 \
    --route "$ROUTE" --rate "$RATE"
  # The same at 100 connections (the load generator adds less latency of its own there).
  MAX=$(row_rps p2-c100)
  RATE=$(python3 -c "print(round($MAX*0.5))")
  bench_row p6-single-c100 rookery-open "$SINGLE" 100 --addr 127.0.0.1:3410 \
    --route "$ROUTE" --rate "$RATE"
else
  unavailable p2-c$MAIN_CONNS rookery "rookery serve did not start (see $RUN_DIR/single.log)"
fi
stop_server "$SINGLE"

# P10 again with a fair schedule (`[runtime] global_queue_interval = 4`: every ready connection
# served within a bounded wait under overload, for some throughput), for information.
start_server single-fair env ROOKERY_RUNTIME__GLOBAL_QUEUE_INTERVAL=$FAIR_GQI \
  "$ROOKERY" serve --config bench/configs/single.toml
SINGLE=$LAST_PID
if wait_port 3410 30 "$SINGLE"; then
  # Warm the fresh process at 10,000 connections first, as the rows above warmed theirs.
  bench_row p10fair-warm rookery "$SINGLE" 10000 --addr 127.0.0.1:3410 --route "$ROUTE"
  p10_pairs p10fair "$SINGLE"
else
  unavailable p10fair-c10000-1 rookery "rookery serve did not start (see $RUN_DIR/single-fair.log)"
fi
stop_server "$SINGLE"

# P1: the ceiling (after the one-process rows: its P6 control runs at their rate).
start_server ceiling "$CEILING" --addr 127.0.0.1:3400
CEIL=$LAST_PID
if wait_port 3400 20 "$CEIL"; then
  for c in "${CONNS_SWEEP[@]}"; do
    bench_row "p1-c$c" ceiling "$CEIL" "$c" --addr 127.0.0.1:3400 --route "$ROUTE"
  done
  # Control for P6: the ceiling at the rate of the one-process P6 run; latency the load
  # generator and the machine add by themselves.
  RATE=$(row_rps p6-single)
  RATE=$(python3 -c "print(round(float('${RATE:-0}')))")
  if [[ $RATE -gt 0 ]]; then
    bench_row p6-ceiling ceiling-open "$CEIL" "$MAIN_CONNS" --addr 127.0.0.1:3400 \
      --route "$ROUTE" --rate "$RATE"
  fi
  RATE=$(row_rps p6-single-c100)
  RATE=$(python3 -c "print(round(float('${RATE:-0}')))")
  if [[ $RATE -gt 0 ]]; then
    bench_row p6-ceiling-c100 ceiling-open "$CEIL" 100 --addr 127.0.0.1:3400 \
      --route "$ROUTE" --rate "$RATE"
    # The machine's floor: the same at a tenth of that rate (both cores mostly idle).
    RATE=$(python3 -c "print(round($RATE / 10))")
    bench_row p6-ceiling-low ceiling-open "$CEIL" 100 --addr 127.0.0.1:3400 \
      --route "$ROUTE" --rate "$RATE"
  fi
else
  for c in "${CONNS_SWEEP[@]}"; do unavailable "p1-c$c" ceiling "ceiling server did not start"; done
fi
stop_server "$CEIL"

# P2's verdict comes from runs in alternation (A B A B), each on a freshly started server with
# the other stopped, so that a change of the host's speed between two blocks of rows minutes
# apart does not decide the ratio (P3, P4, P5 and P10 do the same).
single_row() { # ID CONNS [bench args...]: one run against a fresh one-process server
  local id=$1 conns=$2; shift 2
  start_server "single-$id" env ${SINGLE_ENV:-} "$ROOKERY" serve --config bench/configs/single.toml
  local s=$LAST_PID
  if wait_port 3410 30 "$s"; then
    bench_row "$id" rookery "$s" "$conns" --addr 127.0.0.1:3410 --route "$ROUTE" "$@"
  fi
  stop_server "$s"
}
# remote_row ID GROUP CONFIG GATE_PORT ROOM_PORT [PID...]: one run against a freshly started
# gateway and backend of CONFIG (PIDs: other processes whose CPU counts, e.g. nats-server).
remote_row() {
  local id=$1 group=$2 cfg=$3 gport=$4 rport=$5; shift 5
  start_server "$id-room" "$ROOKERY" serve --config "$cfg" --process room
  local room=$LAST_PID
  start_server "$id-gate" "$ROOKERY" serve --config "$cfg" --process gate
  local gate=$LAST_PID
  if wait_port "$gport" 30 "$gate" && wait_port "$rport" 30 "$room"; then
    sleep 0.5
    bench_row "$id" "$group" "$gate $room $*" "$MAIN_CONNS" --addr "127.0.0.1:$gport" \
      --route "$ROUTE"
  fi
  stop_server "$gate"
  stop_server "$room"
}
ceiling_row() { # ID CONNS [bench args...]: one run against a freshly started ceiling
  local id=$1 conns=$2; shift 2
  start_server "ceiling-$id" "$CEILING" --addr 127.0.0.1:3400
  local c=$LAST_PID
  if wait_port 3400 20 "$c"; then
    bench_row "$id" ceiling "$c" "$conns" --addr 127.0.0.1:3400 --route "$ROUTE" "$@"
  fi
  stop_server "$c"
}
for i in 1 2; do
  single_row "p2pair-rookery-$i" "$MAIN_CONNS"
  # The same with three pass-through middleware layers around the route (for information).
  SINGLE_ENV=ROOKERY_MODULES__ROOM__ECHO_LAYERS=3 single_row "p2pair-layers3-$i" "$MAIN_CONNS"
  ceiling_row "p2pair-ceiling-$i" "$MAIN_CONNS"
done

# Client protocols, for information beside P2: TLS and WebSocket against plain TCP, each on a
# freshly started one-process server, in alternation (a certificate made for the run).
TLS_DIR=$RUN_DIR/tls
mkdir -p "$TLS_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -addext basicConstraints=critical,CA:FALSE \
  -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >/dev/null 2>&1
proto_row() { # ID ADDR [ENV...]: one run against a fresh one-process server at ADDR
  local id=$1 addr=$2; shift 2
  start_server "single-$id" env "$@" "$ROOKERY" serve --config bench/configs/single.toml
  local s=$LAST_PID
  if wait_port 3410 30 "$s"; then
    bench_row "$id" rookery "$s" "$MAIN_CONNS" --addr "$addr" --ca "$TLS_DIR/cert.pem" \
      --route "$ROUTE"
  fi
  stop_server "$s"
}
TLS_ENV=(ROOKERY_GATEWAY__TLS__CERT="$TLS_DIR/cert.pem" ROOKERY_GATEWAY__TLS__KEY="$TLS_DIR/key.pem")
for i in 1 2; do
  proto_row "protopair-tcp-$i" 127.0.0.1:3410
  proto_row "protopair-tls-$i" tls://127.0.0.1:3410 "${TLS_ENV[@]}"
  proto_row "protopair-ws-$i" ws://127.0.0.1:3411/
done

# MQTT and KCP against pomelo over TCP, all driven by rookery-protobench (one request in flight
# per connection), each on a fresh one-process server with every acceptor, in alternation; and
# the same MQTT load through a plain broker (mosquitto) as the yardstick.
# (The MQTT and KCP acceptors only on these servers: the other rows keep the configuration
# they always measured.)
protobench_server_row() { # ID ADDR
  local id=$1 addr=$2
  start_server "single-$id" env ROOKERY_GATEWAY__MQTT=127.0.0.1:3413 \
    ROOKERY_GATEWAY__KCP=127.0.0.1:3414 "$ROOKERY" serve --config bench/configs/single.toml
  local s=$LAST_PID
  if wait_port 3410 30 "$s" && wait_port 3413 30 "$s"; then
    protobench_row "$id" rookery "$s" "$MAIN_CONNS" --addr "$addr" --route "$ROUTE"
  fi
  stop_server "$s"
}
for i in 1 2; do
  protobench_server_row "mqttpair-pomelo-$i" pomelo://127.0.0.1:3410
  protobench_server_row "mqttpair-mqtt-$i" mqtt://127.0.0.1:3413
  protobench_server_row "mqttpair-kcp-$i" kcp://127.0.0.1:3414
  if command -v mosquitto >/dev/null; then
    start_server "mosquitto-$i" mosquitto -p 3415
    M=$LAST_PID
    if wait_port 3415 20 "$M"; then
      protobench_row "mqttpair-broker-$i" mosquitto "$M" "$MAIN_CONNS" --addr broker://127.0.0.1:3415
    fi
    stop_server "$M"
  else
    unavailable "mqttpair-broker-$i" mosquitto "mosquitto not installed (apt-get install mosquitto)"
  fi
done

# P4, P6 (remote over TCP).
start_server tcp-room "$ROOKERY" serve --config bench/configs/remote-tcp.toml --process room
TROOM=$LAST_PID
start_server tcp-gate "$ROOKERY" serve --config bench/configs/remote-tcp.toml --process gate
TGATE=$LAST_PID
if wait_port 3420 30 "$TGATE" && wait_port 3424 30 "$TROOM"; then
  bench_row p4-tcp remote-tcp "$TGATE $TROOM" "$MAIN_CONNS" --addr 127.0.0.1:3420 --route "$ROUTE"
  MAX=$(row_rps p4-tcp)
  RATE=$(python3 -c "print(round($MAX*0.5))")
  bench_row p6-tcp remote-tcp-open "$TGATE $TROOM" "$MAIN_CONNS" --addr 127.0.0.1:3420 \
    --route "$ROUTE" --rate "$RATE"
else
  unavailable p4-tcp remote-tcp "gateway/backend did not start (see $RUN_DIR/tcp-*.log)"
fi
stop_server "$TGATE"
stop_server "$TROOM"
# P4's verdict: the remote path and one process in alternation (as P2's), fresh servers.
for i in 1 2; do
  remote_row "p4pair-remote-$i" remote-tcp bench/configs/remote-tcp.toml 3420 3424
  single_row "p4pair-single-$i" "$MAIN_CONNS"
done

# P5, P6 (remote over NATS); P5's baseline: raw async-nats request/reply through the same
# nats-server behind the ceiling's minimal gateway (same clients, same placement); raw
# request/reply driven by rpcbench, and node-to-node Rookery RPC over NATS, at the same
# concurrency.
if command -v nats-server >/dev/null; then
  NPORT=$(free_port)
  start_server nats-server nats-server -a 127.0.0.1 -p "$NPORT"
  NATS=$LAST_PID
  NURL=nats://127.0.0.1:$NPORT
  if wait_port "$NPORT" 20 "$NATS"; then
    export ROOKERY_CLUSTER__NATS__URL=$NURL
    start_server nats-room "$ROOKERY" serve --config bench/configs/remote-nats.toml --process room
    NROOM=$LAST_PID
    start_server nats-gate "$ROOKERY" serve --config bench/configs/remote-nats.toml --process gate
    NGATE=$LAST_PID
    unset ROOKERY_CLUSTER__NATS__URL
    if wait_port 3430 30 "$NGATE" && wait_port 3435 30 "$NROOM"; then
      sleep 0.5
      bench_row p5-nats remote-nats "$NGATE $NROOM $NATS" "$MAIN_CONNS" --addr 127.0.0.1:3430 \
        --route "$ROUTE"
      MAX=$(row_rps p5-nats)
      RATE=$(python3 -c "print(round($MAX*0.5))")
      bench_row p6-nats remote-nats-open "$NGATE $NROOM $NATS" "$MAIN_CONNS" \
        --addr 127.0.0.1:3430 --route "$ROUTE" --rate "$RATE"
    else
      unavailable p5-nats remote-nats "gateway/backend did not start (see $RUN_DIR/nats-*.log)"
    fi
    stop_server "$NGATE"
    stop_server "$NROOM"

    start_server nats-raw-serve "$RPCBENCH" serve nats-raw --nats "$NURL"
    RAW=$LAST_PID
    sleep 1
    start_server nats-ceiling "$CEILING" --addr 127.0.0.1:3436 --nats "$NURL"
    NCEIL=$LAST_PID
    if wait_port 3436 20 "$NCEIL"; then
      bench_row p5-nats-ceiling nats-ceiling "$NCEIL $RAW $NATS" "$MAIN_CONNS" \
        --addr 127.0.0.1:3436 --route "$ROUTE"
    else
      unavailable p5-nats-ceiling nats-ceiling "NATS ceiling did not start (see $RUN_DIR/nats-ceiling.log)"
    fi
    stop_server "$NCEIL"
    rpc_row p5-nats-raw nats-raw "$RAW $NATS" nats-raw --nats "$NURL" --concurrency "$MAIN_CONNS"
    stop_server "$RAW"

    # P5's verdict: Rookery and the raw baseline in alternation (as P2's), fresh processes for
    # each run, the same nats-server.
    for i in 1 2; do
      ROOKERY_CLUSTER__NATS__URL=$NURL remote_row "p5pair-rookery-$i" remote-nats \
        bench/configs/remote-nats.toml 3430 3435 "$NATS"
      start_server "nats-raw-pair-$i" "$RPCBENCH" serve nats-raw --nats "$NURL"
      PRAW=$LAST_PID
      sleep 1
      start_server "nats-ceiling-pair-$i" "$CEILING" --addr 127.0.0.1:3436 --nats "$NURL"
      PCEIL=$LAST_PID
      if wait_port 3436 20 "$PCEIL"; then
        bench_row "p5pair-raw-$i" nats-ceiling "$PCEIL $PRAW $NATS" "$MAIN_CONNS" \
          --addr 127.0.0.1:3436 --route "$ROUTE"
      fi
      stop_server "$PCEIL"
      stop_server "$PRAW"
    done

    start_server rpc-nats-serve "$RPCBENCH" serve rpc-nats --nats "$NURL"
    RN=$LAST_PID
    sleep 1
    rpc_row p5-rpc-nats rpc-nats "$RN $NATS" rpc-nats --nats "$NURL" --concurrency "$MAIN_CONNS"
    rpc_row p9-rpc-nats rpc-nats "$RN $NATS" rpc-nats --nats "$NURL" --concurrency "$RPC_CONC"
    stop_server "$RN"
  else
    unavailable p5-nats remote-nats "nats-server did not start"
  fi
  stop_server "$NATS"
else
  unavailable p5-nats remote-nats "nats-server not installed (apt-get install nats-server)"
fi

# P9: node-to-node RPC over TCP against tonic unary.
start_server rpc-tcp-serve "$RPCBENCH" serve rpc-tcp --addr 127.0.0.1:3440
RT=$LAST_PID
if wait_port 3440 20 "$RT"; then
  rpc_row p9-rpc-tcp rpc-tcp "$RT" rpc-tcp --addr 127.0.0.1:3440 --concurrency "$RPC_CONC"
else
  unavailable p9-rpc-tcp rpc-tcp "callee did not start"
fi
stop_server "$RT"
start_server tonic-serve "$RPCBENCH" serve tonic --addr 127.0.0.1:3441
TS=$LAST_PID
if wait_port 3441 20 "$TS"; then
  rpc_row p9-tonic tonic "$TS" tonic --addr 127.0.0.1:3441 --concurrency "$RPC_CONC"
else
  unavailable p9-tonic tonic "tonic server did not start"
fi
stop_server "$TS"

# P8: broadcast, one room.
export ROOKERY_MODULES__ROOM__MAX_MEMBERS=100000
start_server fanout-single "$ROOKERY" serve --config bench/configs/single.toml
FS=$LAST_PID
unset ROOKERY_MODULES__ROOM__MAX_MEMBERS
if wait_port 3410 30 "$FS"; then
  fanout_row p8-rookery fanout "$FS" --addr 127.0.0.1:3410 --users "$P8_USERS"
else
  unavailable p8-rookery fanout "rookery serve did not start"
fi
stop_server "$FS"

# P3, P8 against pinus.
wait "$PINUS_INSTALL_PID" 2>/dev/null || true
PSTAT=$(cat "$PINUS_STATUS" 2>/dev/null || echo "install did not finish")
# start_pinus NAME: starts pinus (master, connector, room) and waits for its ports; sets PIN_ALL to
# its processes. Each pinus scenario gets fresh servers, as each Rookery one does.
start_pinus() {
  # pinus' master forks the connector and room servers.
  start_server "$1" env -C "$PINUS_DIR" node app.js env=production
  PIN_ALL="$LAST_PID"
  if wait_port 3460 60 "$LAST_PID" && wait_port 3467 60 "$LAST_PID"; then
    sleep 2   # the master reports "all servers startup" shortly after the ports open
    # In production mode the master starts the connector and room servers detached (each in
    # its own session): track them by pid, for CPU time and to stop them.
    local p
    for p in $(pinus_children); do
      SERVER_GROUPS+=("$p")
      PIN_ALL="$PIN_ALL $p"
    done
    log "pinus processes: $PIN_ALL"
    return 0
  fi
  return 1
}

stop_pinus() {
  local p
  for p in $PIN_ALL; do stop_server "$p"; done
  for p in $(pinus_children); do kill -KILL "$p" 2>/dev/null || true; done
}

if [[ $PSTAT == ok ]]; then
  if start_pinus pinus; then
    for c in "${PINUS_CONNS[@]}"; do
      bench_row "p3-c$c" pinus "$PIN_ALL" "$c" --addr 127.0.0.1:3460 --route "$ROUTE"
    done
  else
    unavailable p3-c$MAIN_CONNS pinus "pinus did not start (see $RUN_DIR/pinus.log)"
  fi
  stop_pinus
  # P3's verdict: Rookery and pinus in alternation (R P R P) at the main size, so that a change
  # of the host's speed between the two blocks of rows does not decide the ratio. Each run has
  # a freshly started server and the other one stopped (pinus is not idle after a run).
  # P3 compares p99 too: the generator serves its own connections in turn (--fair), so that
  # when it is the saturated side (against Rookery) it adds no queueing tail of its own.
  # The ceiling takes a turn in the same alternation (R P C R P C), for information: its ratio
  # to pinus is what a server that only frames packets shows against pinus on this machine
  # with this generator.
  for i in 1 2; do
    single_row "p3pair-rookery-$i" "$MAIN_CONNS" --fair
    if start_pinus "pinus-pair-$i"; then
      bench_row "p3pair-pinus-$i" pinus "$PIN_ALL" "$MAIN_CONNS" --addr 127.0.0.1:3460 \
        --route "$ROUTE" --fair
    fi
    stop_pinus
    ceiling_row "p3pair-ceiling-$i" "$MAIN_CONNS" --fair
  done
  # For information: Rookery with a fair schedule (the same generator), against the pinus runs.
  SINGLE_ENV=ROOKERY_RUNTIME__GLOBAL_QUEUE_INTERVAL=$FAIR_GQI single_row p3fair-rookery \
    "$MAIN_CONNS" --fair
  if start_pinus pinus-fanout; then
    fanout_row p8-pinus pinus-fanout "$PIN_ALL" --addr 127.0.0.1:3460 --users "$P8_USERS" \
      --uid-prefix pin-
  else
    unavailable p8-pinus pinus-fanout "pinus did not start (see $RUN_DIR/pinus-fanout.log)"
  fi
  stop_pinus
else
  unavailable p3-c$MAIN_CONNS pinus "$PSTAT"
  unavailable p8-pinus pinus-fanout "$PSTAT"
fi

# P7: idle WebSocket connections, gateway RSS per connection (a fresh server per size).
for n in "${P7_SIZES[@]}"; do
  limit=$((NOFILE - 300))
  size=$n
  note=""
  if [[ $size -gt $limit ]]; then
    size=$limit
    note="open files limited to $NOFILE (hard limit; raising it needs CAP_SYS_RESOURCE): ran $size instead of $n"
    log "P7: $note"
  fi
  start_server p7-single "$ROOKERY" serve --config bench/configs/single.toml
  G=$LAST_PID
  if ! wait_port 3411 30 "$G"; then
    unavailable "p7-$n" idle "rookery serve did not start"
    stop_server "$G"
    continue
  fi
  sleep 1
  base_rss=$(rss_kib "$G")
  base_fds=$(ls "/proc/$G/fd" | wc -l)
  log "run p7-$n: $size idle WebSocket connections (baseline RSS $base_rss KiB)"
  out=$RUN_DIR/p7-$n.json
  "${GEN[@]}" "$ROOKERY" bench --json --no-progress --ws --hold --connections "$size" \
    --duration "$HOLD" --connect-rate 5000 --timeout 20 --source-ips "$SOURCE_IPS" \
    --addr 127.0.0.1:3411 > "$out" 2> "$RUN_DIR/p7-$n.err" &
  B=$!
  CLIENT_PIDS+=("$B")
  held_rss=0
  for i in $(seq 1 1200); do
    fds=$(ls "/proc/$G/fd" | wc -l)
    if [[ $((fds - base_fds)) -ge $size ]]; then
      sleep 2
      held_rss=$(rss_kib "$G")
      break
    fi
    kill -0 "$B" 2>/dev/null || break
    sleep 0.1
  done
  held_fds=$(ls "/proc/$G/fd" | wc -l)
  wait "$B" || log "  p7-$n: load generator exited with an error"
  sleep 1
  after_rss=$(rss_kib "$G")
  "${REPORT[@]}" add "$ROWS" "p7-$n" idle "$out" base_rss_kib="$base_rss" held_rss_kib="$held_rss" \
    after_rss_kib="$after_rss" held_fds=$((held_fds - base_fds)) target_connections="$n" note="$note"
  stop_server "$G"
done

# ------------------------------------------------------------------------------------------
# Optional profile of the one-process server.
if [[ $PROFILE == 1 ]]; then
  PROF=$RUN_DIR/profile
  mkdir -p "$PROF"
  if command -v perf >/dev/null; then
    start_server perf-single "$ROOKERY" serve --config bench/configs/single.toml
    PS=$LAST_PID
    if wait_port 3410 30 "$PS"; then
      log "profile: perf record -e cpu-clock on the server under $MAIN_CONNS connections"
      "${GEN[@]}" "$ROOKERY" bench --json --no-progress --connections "$MAIN_CONNS" --duration 12 \
        --warmup 1 --connect-rate "$CONNECT_RATE" --payload "$PAYLOAD" --route "$ROUTE" \
        --addr 127.0.0.1:3410 --source-ips "$SOURCE_IPS" > "$PROF/perf-bench.json" 2>/dev/null &
      B=$!
      CLIENT_PIDS+=("$B")
      sleep 3
      timeout 30 perf record -e cpu-clock -F 1999 -p "$PS" -o "$PROF/perf.data" -- sleep 8 \
        > "$PROF/perf-record.log" 2>&1 || true
      wait "$B" || true
      perf report -i "$PROF/perf.data" --no-children --percent-limit 0.7 --stdio \
        > "$RESULTS/profile-perf.txt" 2>/dev/null || true
      perf report -i "$PROF/perf.data" --sort dso --stdio \
        > "$RESULTS/profile-perf-dso.txt" 2>/dev/null || true
    fi
    stop_server "$PS"
    # The remote path: gateway and backend over TCP, both processes sampled.
    start_server perf-tcp-room "$ROOKERY" serve --config bench/configs/remote-tcp.toml --process room
    PR=$LAST_PID
    start_server perf-tcp-gate "$ROOKERY" serve --config bench/configs/remote-tcp.toml --process gate
    PG=$LAST_PID
    if wait_port 3420 30 "$PG" && wait_port 3424 30 "$PR"; then
      log "profile: perf record -e cpu-clock on gateway + backend (remote TCP path)"
      "${GEN[@]}" "$ROOKERY" bench --json --no-progress --connections "$MAIN_CONNS" --duration 12 \
        --warmup 1 --connect-rate "$CONNECT_RATE" --payload "$PAYLOAD" --route "$ROUTE" \
        --addr 127.0.0.1:3420 --source-ips "$SOURCE_IPS" > "$PROF/perf-tcp-bench.json" 2>/dev/null &
      B=$!
      CLIENT_PIDS+=("$B")
      sleep 3
      timeout 30 perf record -e cpu-clock -F 1999 -p "$PG,$PR" -o "$PROF/perf-tcp.data" -- sleep 8 \
        > "$PROF/perf-tcp-record.log" 2>&1 || true
      wait "$B" || true
      perf report -i "$PROF/perf-tcp.data" --sort pid,sym --no-children --percent-limit 0.7 --stdio \
        > "$RESULTS/profile-perf-remote-tcp.txt" 2>/dev/null || true
      perf report -i "$PROF/perf-tcp.data" --sort pid,dso --stdio \
        > "$RESULTS/profile-perf-remote-tcp-dso.txt" 2>/dev/null || true
    fi
    stop_server "$PG"
    stop_server "$PR"
  fi
  if command -v valgrind >/dev/null; then
    log "profile: valgrind --tool=callgrind, ~20k requests"
    start_server callgrind-single valgrind --tool=callgrind --callgrind-out-file="$PROF/callgrind.out" \
      "$ROOKERY" serve --config bench/configs/single.toml
    CG=$LAST_PID
    if wait_port 3410 120 "$CG"; then
      "${GEN[@]}" "$ROOKERY" bench --json --no-progress --connections 50 \
        --duration 25 --connect-rate 1000 --timeout 20 --payload "$PAYLOAD" --route "$ROUTE" \
        --addr 127.0.0.1:3410 > "$PROF/callgrind-bench.json" 2>/dev/null || true
    fi
    stop_group "$CG"
    for i in $(seq 1 100); do kill -0 -- "-$CG" 2>/dev/null || break; sleep 0.2; done
    stop_server "$CG"
    callgrind_annotate --inclusive=no "$PROF/callgrind.out" 2>/dev/null | head -n 60 \
      > "$RESULTS/profile-callgrind.txt" || true
    callgrind_annotate --inclusive=yes "$PROF/callgrind.out" 2>/dev/null | head -n 80 \
      > "$RESULTS/profile-callgrind-inclusive.txt" || true
    # The ceiling under the same load, for instructions per request (it has no signal
    # handler: dump with callgrind_control before stopping it).
    log "profile: valgrind --tool=callgrind on the ceiling"
    start_server callgrind-ceiling valgrind --tool=callgrind \
      --callgrind-out-file="$PROF/callgrind-ceiling.out" "$CEILING" --addr 127.0.0.1:3400
    CC=$LAST_PID
    if wait_port 3400 120 "$CC"; then
      "${GEN[@]}" "$ROOKERY" bench --json --no-progress --connections 50 \
        --duration 10 --connect-rate 1000 --timeout 20 --payload "$PAYLOAD" --route "$ROUTE" \
        --addr 127.0.0.1:3400 > "$PROF/callgrind-ceiling-bench.json" 2>/dev/null || true
      callgrind_control -d "$CC" > /dev/null 2>&1 || true
      sleep 2
    fi
    stop_server "$CC"
    python3 - "$PROF" "$RESULTS/profile-callgrind-per-request.txt" <<'PY' || true
import glob, json, re, subprocess, sys
prof, out = sys.argv[1], sys.argv[2]
def total(pattern):
    n = 0
    for f in glob.glob(pattern):
        txt = subprocess.run(["callgrind_annotate", f], capture_output=True, text=True).stdout
        m = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", txt)
        if m:
            n = max(n, int(m.group(1).replace(",", "")))
    return n
def reqs(path):
    try:
        return json.load(open(path))["requests"]
    except Exception:
        return 0
with open(out, "w") as f:
    for name, pat, bench in (("rookery serve (one process)", "callgrind.out", "callgrind-bench.json"),
                             ("rookery-ceiling", "callgrind-ceiling.out*", "callgrind-ceiling-bench.json")):
        ir, n = total(f"{prof}/{pat}"), reqs(f"{prof}/{bench}")
        per = f"{ir / n:,.0f}" if n else "?"
        f.write(f"{name}: {ir:,} user-space instructions, {n:,} requests measured: "
                f"~{per} per request (connection setup included)\n")
PY
  fi
fi

# ------------------------------------------------------------------------------------------
"${REPORT[@]}" finish "$ROWS" "$RUN_DIR/meta.json" "$RESULTS/latest.json" "$RESULTS/plot.svg"
log "results: $RESULTS/latest.json, $RESULTS/plot.svg (logs: $RUN_DIR)"

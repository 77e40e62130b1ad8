#!/usr/bin/env bash
# Measures what the kernel collectors cost (root; stress-ng, python3):
#  1. per event: the kernel's BPF run-time statistics of each program
#     (run_time_ns / run_cnt, through the agent's --ebpf.stats), for
#     workloads run inside a container and outside any;
#  2. the slowdown of hot-path benchmarks run inside a container (and,
#     for runqlat, outside any), agent with the collector on vs off, runs
#     alternated, medians compared; and, as "switch-baseline", the same
#     for a sched_switch program that returns at once
#     (examples/switch_baseline.rs): the part of runqlat's cost that any
#     program on that hook pays.
# Prints Markdown for BENCHMARKS.md, section "Kernel program costs".
#
#   sudo scripts/bench-kernel-collectors.sh [TARGET_DIR] [REPS]
#
# ONLY="runqlat switch-baseline" (say) limits part 2 to those collectors.
set -euo pipefail

TARGET=${1:-target}
REPS=${2:-7}
AGENT=$TARGET/debug/apptheus
SIM=$TARGET/debug/apptheus-starter-sim
BASELINE=$TARGET/debug/examples/switch_baseline
[ -x "$AGENT" ] && [ -x "$SIM" ] && [ -x "$BASELINE" ] ||
    { echo "build first: cargo build -p apptheus -p apptheus-testkit --bins --examples" >&2; exit 1; }
command -v stress-ng >/dev/null || { echo "stress-ng missing (apt-get install stress-ng)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/apptheus-bench-XXXXXX)
chmod 755 "$WORK"
STARTER=$WORK/starter
cp "$SIM" "$STARTER"
chmod 755 "$STARTER"
# An untrusted copy, to run the simulator's workloads without starting a
# container.
COPY=$WORK/sim
cp "$SIM" "$COPY"
PORT=19391
AGENT_PID=
LISTENER_PID=
BASELINE_PID=
cleanup() {
    [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
    [ -n "$BASELINE_PID" ] && kill "$BASELINE_PID" 2>/dev/null && wait "$BASELINE_PID" 2>/dev/null || true
    [ -n "$LISTENER_PID" ] && kill "$LISTENER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# GET through bash's /dev/tcp: the response, headers included.
http_get() {
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
    cat <&3
    exec 3>&-
}

INTERVAL=1s
start_agent() {
    "$AGENT" --trust.path="$STARTER" --web.listen-address=127.0.0.1:$PORT \
        --socket.path="$WORK/gateway.sock" --monitor.interval="$INTERVAL" "$@" \
        >"$WORK/agent.log" 2>&1 &
    AGENT_PID=$!
    for _ in $(seq 200); do
        http_get /-/ready 2>/dev/null | head -1 | grep -q ' 200 ' && return 0
        sleep 0.05
    done
    cat "$WORK/agent.log" >&2
    exit 1
}
stop_process() {
    kill "$1"
    wait "$1" 2>/dev/null || true
}
stop_agent() {
    stop_process "$AGENT_PID"
    AGENT_PID=
}
# The "collector" switch-baseline: a sched_switch program that returns at
# once (examples/switch_baseline.rs), next to an agent with runqlat off.
start_baseline() {
    "$BASELINE" >"$WORK/baseline" 2>&1 &
    BASELINE_PID=$!
    for _ in $(seq 200); do
        grep -q attached "$WORK/baseline" && return 0
        kill -0 "$BASELINE_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$WORK/baseline" >&2
    exit 1
}
stop_baseline() {
    stop_process "$BASELINE_PID"
    BASELINE_PID=
}

# "program run_seconds runs" for each program, from --ebpf.stats (taken
# at each sample: wait for the next one).
program_stats() {
    sleep 0.3
    http_get /metrics | awk '
        /^apptheus_ebpf_program_run_seconds_total\{/ { match($0, /program="[^"]*"/); p = substr($0, RSTART + 9, RLENGTH - 10); t[p] = $NF }
        /^apptheus_ebpf_program_runs_total\{/ { match($0, /program="[^"]*"/); p = substr($0, RSTART + 9, RLENGTH - 10); n[p] = $NF }
        END { for (p in t) print p, t[p], n[p] }' | sort
}

# ns per run and runs of each program between two program_stats outputs.
per_run() {
    join <(echo "$1") <(echo "$2") | awk '{
        runs = $5 - $3; t = $4 - $2
        if (runs > 0) printf "%s %.0f %d\n", $1, t * 1e9 / runs, runs }'
}

in_container() { "$STARTER" -- "$@"; }

# Workloads. Each prints one number: a rate (higher is better) or CPU
# seconds (user + system, of the workload and its children; lower is
# better). CPU time, not wall time: this machine is shared, and what the
# programs cost is CPU time in the workload's context.
TIMEFORMAT='%3U %3S'
cpu_seconds() { # the command's user + system seconds; a failure ends the script
    local t
    if ! t=$({ time "$@" >/dev/null 2>"$WORK/err"; } 2>&1); then
        echo "benchmark command failed: $*" >&2
        cat "$WORK/err" >&2
        kill $$
    fi
    echo "$t" | awk '{ printf "%.3f\n", $1 + $2 }'
}
switch_rate() { # context switches per CPU second, stress-ng's pipe method
    "$@" stress-ng --switch 2 -t 3 --metrics-brief 2>&1 | awk '$4 == "switch" && $5 ~ /^[0-9]+$/ { print $10 }'
}
sock_rate() { # stress-ng's TCP loopback socket stressor, ops per CPU second
    "$@" stress-ng --sock 1 -t 3 --metrics-brief 2>&1 | awk '$4 == "sock" && $5 ~ /^[0-9]+$/ { print $10 }'
}
syscall_seconds() { # 4M read+write syscalls on /dev/zero -> /dev/null
    cpu_seconds "$@" dd if=/dev/zero of=/dev/null bs=1 count=2000000 status=none
}
file_seconds() { # 256 MiB written to and read back from the page cache, 4 KiB at a time
    cpu_seconds "$@" sh -c "dd if=/dev/zero of=$WORK/f bs=4k count=65536 status=none && dd if=$WORK/f of=/dev/null bs=4k status=none && rm $WORK/f"
}
# A loopback TCP sink for net_seconds, for the whole run.
NET_PORT=19392
python3 -S -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", '$NET_PORT')); s.listen(4); print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(1 << 20): pass
    c.close()' >"$WORK/listener" &
LISTENER_PID=$!
for _ in $(seq 600); do grep -q ready "$WORK/listener" 2>/dev/null && break; sleep 0.05; done
grep -q ready "$WORK/listener" || { echo "the TCP sink did not start" >&2; exit 1; }
net_seconds() { # 1 GiB over loopback TCP, the sender's CPU time
    cpu_seconds "$@" "$COPY" workload --net-send 127.0.0.1:$NET_PORT:1073741824
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
best() { # the least disturbed run: the highest rate or the fewest seconds
    if [ "$1" = higher ]; then sort -g | tail -1; else sort -g | head -1; fi
}

echo "## Kernel program costs"
echo
echo "Measured by \`scripts/bench-kernel-collectors.sh\` on $(uname -r), $(nproc) CPUs,"
echo "$(date -u +%Y-%m-%d). Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
echo

# 1. Per-event costs.
INTERVAL=100ms
start_agent --collector.runqlat --collector.fsio --ebpf.stats
echo "### Per event (BPF run-time statistics: run_time_ns / run_cnt)"
echo
echo "| workload | where | program | runs | ns per run |"
echo "|---|---|---|---|---|"
for w in switch_rate syscall_seconds file_seconds net_seconds sock_rate; do
    for where in container host; do
        before=$(program_stats)
        if [ $where = container ]; then $w in_container >/dev/null; else $w >/dev/null; fi
        after=$(program_stats)
        per_run "$before" "$after" | while read -r p ns runs; do
            [ "$runs" -ge 100 ] || continue
            echo "| $w | $where | $p | $runs | $ns |"
        done
    done
done
stop_agent
INTERVAL=1s
echo

# 2. Slowdown, collector on vs off, with the benchmark inside a container
# (the collector's full path) and outside any (what every other task on
# the node pays while the collector is on); the other collectors at their
# defaults.
echo "### Slowdown, collector on vs off ($REPS alternated runs each)"
echo
echo "Rates are per CPU second (stress-ng's usr+sys column), times are CPU seconds"
echo "(user + system) of the benchmark; \"best\" compares the least disturbed runs."
echo "\"container\": the benchmark runs in a container; \"host\": in none."
echo
echo "| collector | benchmark | where | off (median) | on (median) | slowdown (median) | off (best) | on (best) | slowdown (best) |"
echo "|---|---|---|---|---|---|---|---|---|"
compare() { # collector workload higher_is_better container|host
    local c=$1 w=$2 better=$3 where=$4 off on run=
    if [ -n "${ONLY:-}" ] && ! printf '%s\n' $ONLY | grep -qxF -- "$c"; then
        return 0
    fi
    [ "$where" = container ] && run=in_container
    : >"$WORK/off"
    : >"$WORK/on"
    for _ in $(seq "$REPS"); do
        if [ "$c" = switch-baseline ]; then
            start_agent --no-collector.runqlat
            $w $run >>"$WORK/off"
            start_baseline
            $w $run >>"$WORK/on"
            stop_baseline
            stop_agent
            continue
        fi
        start_agent --no-collector."$c"
        $w $run >>"$WORK/off"
        stop_agent
        start_agent --collector."$c"
        $w $run >>"$WORK/on"
        stop_agent
    done
    off=$(median <"$WORK/off")
    on=$(median <"$WORK/on")
    boff=$(best "$better" <"$WORK/off")
    bon=$(best "$better" <"$WORK/on")
    slow() {
        awk -v off="$1" -v on="$2" -v b="$better" \
            'BEGIN { printf "%.1f", (b == "higher" ? off / on - 1 : on / off - 1) * 100 }'
    }
    echo "| $c | $w | $where | $off | $on | $(slow "$off" "$on") % | $boff | $bon | $(slow "$boff" "$bon") % |"
}
compare runqlat switch_rate higher container
compare runqlat switch_rate higher host
compare switch-baseline switch_rate higher container
compare switch-baseline switch_rate higher host
compare fsio syscall_seconds lower container
compare fsio file_seconds lower container
compare network net_seconds lower container
compare network sock_rate higher container

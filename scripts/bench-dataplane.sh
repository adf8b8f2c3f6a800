#!/usr/bin/env bash
# Data-plane benchmark (issue 4, "Benchmarks"): single-stream TCP throughput (iperf3)
# between two network namespaces over
#   1. the raw veth that joins them,
#   2. Debian's wireguard-go configured with `wg`,
#   3. boringtun-cli from crates.io (configured with `wg` over its UAPI socket),
#   4. weft: two `weft daemon`s joined to a `weft server`, iperf3 across their 100.x addresses,
# plus the time from `weft up` to the first direct `weft ping` pong.
#
# Usage (root):  scripts/bench-dataplane.sh [--update-docs]
#   --update-docs   also replace the results block of docs/benchmarks.md ("dataplane" section)
# Environment:
#   BENCH_SECONDS   iperf3 duration per run (default 10)
#   BENCH_NO_BUILD  set to 1 to skip `cargo build --release -p weft` (uses WEFT_BIN or target/release/weft)
#   WEFT_BIN        weft binary to use (then nothing is built)
#   BORINGTUN_BIN   boringtun-cli binary (default: target/bench-tools/bin/boringtun-cli, installed
#                   with `cargo install --root target/bench-tools boringtun-cli` when missing)
#   BENCH_ONLY      space-separated subset of: veth wireguard-go boringtun weft
#   BENCH_BIGBUF    experiment: force this many bytes of UDP socket buffer (SO_RCVBUFFORCE and
#                   SO_SNDBUFFORCE through an LD_PRELOAD shim built with cc) in weft and boringtun-cli
#   BENCH_TXQLEN    experiment: set this txqueuelen on the tunnel interfaces (default: leave 500)
#   BENCH_PERF      set to 1 to sample the tunnel processes with `perf record -e cpu-clock` during
#                   their iperf3 run (target/bench-dataplane/NAME.perf.{data,txt})
#
# Network safety: everything happens inside two namespaces this script creates, joined by one
# veth pair; nothing is linked to the host namespace. Addresses: 198.18.0.0/24 on the veth,
# 198.19.0.0/24 inside the WireGuard tunnels, weft's own 100.64.0.0/10 addresses.
# On exit (also on error or Ctrl-C) the trap kills the processes it started, by PID, and deletes
# the namespaces. Logs and raw iperf3 JSON stay in target/bench-dataplane/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

UPDATE_DOCS=0
for arg in "$@"; do
    case "$arg" in
        --update-docs) UPDATE_DOCS=1 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$UPDATE_DOCS" = 1 ] && [ -n "${BENCH_BIGBUF:-}${BENCH_TXQLEN:-}${BENCH_ONLY:-}${BENCH_PERF:-}" ]; then
    echo "bench-dataplane: --update-docs records the default run only (unset BENCH_BIGBUF, BENCH_TXQLEN, BENCH_ONLY, BENCH_PERF)" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "bench-dataplane: needs root (namespaces, TUN)" >&2; exit 1; }
for tool in ip iperf3 wg wireguard-go jq curl ss; do
    command -v "$tool" >/dev/null || { echo "bench-dataplane: missing $tool (apt-get install iproute2 iperf3 wireguard-tools wireguard-go jq curl)" >&2; exit 1; }
done

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ONLY=${BENCH_ONLY:-veth wireguard-go boringtun weft}
OUT="$ROOT/target/bench-dataplane"
rm -rf "$OUT"
mkdir -p "$OUT"

TAG="$$"
NS_A="wbench-$TAG-a"
NS_B="wbench-$TAG-b"
VETH_A="wbv${TAG}a"
VETH_B="wbv${TAG}b"
ADDR_A=198.18.0.1
ADDR_B=198.18.0.2
TUN_ADDR_A=198.19.0.1
TUN_ADDR_B=198.19.0.2
WG_PORT=51820

PIDS=()
WG_IFACES=()

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
    done
    for ns in "$NS_A" "$NS_B"; do
        ip netns del "$ns" 2>/dev/null
    done
    for ifc in "${WG_IFACES[@]}"; do
        rm -f "/var/run/wireguard/$ifc.sock"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

# Starts "$@" in the background inside namespace $1 (log to $2) and records its PID.
# `ip netns exec` execs the program, so $! is the program's own PID.
spawn() {
    local ns=$1 logfile=$2
    shift 2
    ip netns exec "$ns" "$@" >"$logfile" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    LAST_PID=$pid
}

# Stops one PID we started (and forgets it).
stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Polls "$@" until it succeeds or $1 seconds pass.
wait_until() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# CPU time (user+system, clock ticks) of the given PIDs, summed.
cpu_ticks() {
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # Fields after the ")" that closes comm: state is 3rd overall, utime 14th, stime 15th.
        stat=${stat##*) }
        # shellcheck disable=SC2086
        set -- $stat
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Results
declare -A GBPS=() RETR=() CPU=() MTU=() NOTE=() UDPERR=() TUNDROP=() PKTS=() CPU_PKT=()
declare -A PROF_PKTS=() PROF_SYS=() PROF_CTX=() PROF_KERNEL=() PROF_CRYPTO=() PROF_ALLOC=() PROF_SCHED=()
# The tunnel interface in namespace A whose packets (rx+tx) count as "tunneled packets".
TUN_IF_A=""
TUN_IF_B=""
# UDP RcvbufErrors + SndbufErrors of namespace $1 (/proc/net/snmp is per namespace).
udp_buf_errors() {
    ip netns exec "$1" cat /proc/net/snmp | awk '
        $1 == "Udp:" && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
        $1 == "Udp:" { print $col["RcvbufErrors"] + $col["SndbufErrors"]; exit }'
}
# "RcvbufErrors SndbufErrors" of namespace $1, for the per-run detail file.
udp_buf_errors_split() {
    ip netns exec "$1" cat /proc/net/snmp | awk '
        $1 == "Udp:" && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
        $1 == "Udp:" { print $col["RcvbufErrors"], $col["SndbufErrors"]; exit }'
}
# Packets dropped by the tunnel interfaces (tx.dropped: the TUN queue towards the reading
# process was full; rx.dropped: a write was refused), both namespaces.
tun_drops() {
    local total=0 n
    if [ -n "$TUN_IF_A" ]; then
        n=$(ip -n "$NS_A" -s -j link show dev "$TUN_IF_A" 2>/dev/null | jq '.[0].stats64.tx.dropped + .[0].stats64.rx.dropped') || n=0
        total=$((total + n))
    fi
    if [ -n "$TUN_IF_B" ]; then
        n=$(ip -n "$NS_B" -s -j link show dev "$TUN_IF_B" 2>/dev/null | jq '.[0].stats64.tx.dropped + .[0].stats64.rx.dropped') || n=0
        total=$((total + n))
    fi
    echo "$total"
}
tun_packets() {
    if [ -z "$TUN_IF_A" ]; then echo 0; return; fi
    ip -n "$NS_A" -s -j link show dev "$TUN_IF_A" 2>/dev/null |
        jq '.[0].stats64.rx.packets + .[0].stats64.tx.packets' 2>/dev/null || echo 0
}
ORDER=()

# iperf3 between the namespaces: server in B, client in A towards $2. Tunnel PIDs in $3...
# Records GBPS[$1], RETR[$1], CPU[$1] (tunnel processes' CPU, % of one core, both ends summed).
run_iperf() {
    local name=$1 dst=$2
    shift 2
    local tunnel_pids=("$@")
    spawn "$NS_B" "$OUT/$name.iperf-server.log" iperf3 -s -1 -B "$dst"
    local srv=$LAST_PID
    if ! wait_until 10 in_b ss -Hltn "sport = :5201"; then
        NOTE[$name]="iperf3 server did not start"
        stop_pid "$srv"
        return 1
    fi
    local t0 c0 t1 c1
    local perf_pid="" perf_stat_pid=""
    if [ -n "${BENCH_PERF:-}" ] && [ "${#tunnel_pids[@]}" -gt 0 ] && command -v perf >/dev/null; then
        # Sampling profile of the tunnel processes (software clock: works without PMU access).
        perf record -q -e cpu-clock -F 499 -g -p "$(IFS=,; echo "${tunnel_pids[*]}")" \
            -o "$OUT/$name.perf.data" -- sleep "$SECONDS_PER_RUN" >"$OUT/$name.perf.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(IFS=,; echo "${tunnel_pids[*]}")" \
            -o "$OUT/$name.perf-stat.csv" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
        perf_stat_pid=$!
        PIDS+=("$perf_stat_pid")
    fi
    if [ -n "${BENCH_TXQLEN:-}" ]; then
        [ -z "$TUN_IF_A" ] || ip -n "$NS_A" link set dev "$TUN_IF_A" txqueuelen "$BENCH_TXQLEN"
        [ -z "$TUN_IF_B" ] || ip -n "$NS_B" link set dev "$TUN_IF_B" txqueuelen "$BENCH_TXQLEN"
    fi
    local pk0 ue0 td0
    pk0=$(tun_packets)
    ue0=$(( $(udp_buf_errors "$NS_A") + $(udp_buf_errors "$NS_B") ))
    echo "before: A rcvbuf/sndbuf errors $(udp_buf_errors_split "$NS_A"), B $(udp_buf_errors_split "$NS_B")" >"$OUT/$name.udp-errors.txt"
    td0=$(tun_drops)
    t0=$(date +%s.%N)
    c0=$(cpu_ticks "${tunnel_pids[@]}")
    if ! in_a iperf3 -c "$dst" -t "$SECONDS_PER_RUN" -J --connect-timeout 5000 >"$OUT/$name.iperf.json" 2>"$OUT/$name.iperf.err"; then
        NOTE[$name]="iperf3 failed: $(jq -r '.error // empty' "$OUT/$name.iperf.json" 2>/dev/null | head -c 200)"
        stop_pid "$srv"
        return 1
    fi
    c1=$(cpu_ticks "${tunnel_pids[@]}")
    t1=$(date +%s.%N)
    stop_pid "$srv"
    local pk1
    pk1=$(tun_packets)
    UDPERR[$name]=$(( $(udp_buf_errors "$NS_A") + $(udp_buf_errors "$NS_B") - ue0 ))
    echo "after:  A rcvbuf/sndbuf errors $(udp_buf_errors_split "$NS_A"), B $(udp_buf_errors_split "$NS_B")" >>"$OUT/$name.udp-errors.txt"
    TUNDROP[$name]=$(( $(tun_drops) - td0 ))
    if [ -n "$perf_pid" ]; then
        wait "$perf_pid" 2>/dev/null || true
        wait "$perf_stat_pid" 2>/dev/null || true
        stop_pid "$perf_pid"
        stop_pid "$perf_stat_pid"
        perf report -i "$OUT/$name.perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null |
            grep -v '^$' | head -200 >"$OUT/$name.perf.txt" || true
        local pkts=$((pk1 - pk0)) sys ctx
        sys=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ { print $1 }' "$OUT/$name.perf-stat.csv")
        ctx=$(awk -F, '$3 ~ /context-switches/ { print $1 }' "$OUT/$name.perf-stat.csv")
        PROF_PKTS[$name]=$pkts
        if [ "$pkts" -gt 0 ] && [ -n "$sys" ] && [ -n "$ctx" ]; then
            PROF_SYS[$name]=$(awk -v a="$sys" -v p="$pkts" 'BEGIN { printf "%.2f", a / p }')
            PROF_CTX[$name]=$(awk -v a="$ctx" -v p="$pkts" 'BEGIN { printf "%.2f", a / p }')
        fi
        PROF_KERNEL[$name]=$(awk '$2 == "[kernel.kallsyms]" { s += $1 } END { printf "%.0f%%", s }' "$OUT/$name.perf.txt")
        PROF_CRYPTO[$name]=$(awk 'tolower($0) ~ /chacha|poly1305|aead|blake2|curve25519|x25519/ { s += $1 }
            $3 == "[.]" && $2 !~ /^(libc|libm|\[vdso\])/ && $NF !~ /^0x/ { named = 1 }
            END { if (named) printf "%.0f%%", s; else print "? (no symbols)" }' "$OUT/$name.perf.txt")
        PROF_ALLOC[$name]=$(awk '$2 ~ /libc/ && $NF ~ /malloc|free|realloc|cfree/ { s += $1 } END { printf "%.1f%%", s }' "$OUT/$name.perf.txt")
        PROF_SCHED[$name]=$(awk '$NF ~ /^finish_task_switch/ { s += $1 } END { printf "%.0f%%", s }' "$OUT/$name.perf.txt")
    fi
    local bps
    bps=$(jq -r '.end.sum_received.bits_per_second' "$OUT/$name.iperf.json")
    GBPS[$name]=$(awk -v b="$bps" 'BEGIN { printf "%.3f", b / 1e9 }')
    RETR[$name]=$(jq -r '.end.sum_sent.retransmits // 0' "$OUT/$name.iperf.json")
    if [ "${#tunnel_pids[@]}" -gt 0 ]; then
        CPU[$name]=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
            'BEGIN { printf "%.0f%%", 100 * (b - a) / hz / (t1 - t0) }')
        PKTS[$name]=$((pk1 - pk0))
        local bytes
        bytes=$(jq -r '.end.sum_received.bytes // 0' "$OUT/$name.iperf.json")
        CPU_PKT[$name]=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v n="$bytes" \
            'BEGIN { if (n > 0) printf "%.1f", (b - a) / hz / (n / 1e9); else print "-" }')
    else
        CPU[$name]="-"
    fi
    log "$name: ${GBPS[$name]} Gbit/s (retransmits ${RETR[$name]}, tunnel CPU ${CPU[$name]})"
}

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

# Experiment (BENCH_BIGBUF=BYTES): an LD_PRELOAD shim that forces BYTES of receive and send
# buffer onto every UDP socket at bind(), i.e. what SO_RCVBUFFORCE/SO_SNDBUFFORCE in the daemon
# would do. It reaches programs that bind through libc (weft, boringtun-cli), not Go's
# wireguard-go, which makes its own system calls.
PRELOAD_ENV=(env)
if [ -n "${BENCH_BIGBUF:-}" ]; then
    command -v cc >/dev/null || { echo "bench-dataplane: BENCH_BIGBUF needs a C compiler (cc)" >&2; exit 1; }
    cat >"$OUT/bigbuf.c" <<'SHIM'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind) real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM) {
        const char *e = getenv("BENCH_BIGBUF");
        int size = e ? atoi(e) : 0;
        if (size > 0) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
            setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
        }
    }
    return real_bind(fd, addr, len);
}
SHIM
    cc -O2 -shared -fPIC -o "$OUT/bigbuf.so" "$OUT/bigbuf.c" -ldl
    PRELOAD_ENV=(env "LD_PRELOAD=$OUT/bigbuf.so" "BENCH_BIGBUF=$BENCH_BIGBUF")
    log "experiment: UDP buffers forced to $BENCH_BIGBUF bytes in weft and boringtun-cli (LD_PRELOAD)"
fi
[ -z "${BENCH_TXQLEN:-}" ] || log "experiment: txqueuelen $BENCH_TXQLEN on the tunnel interfaces"

# ---------------------------------------------------------------------------------------------
log "namespaces $NS_A <-> $NS_B over one veth pair"
ip netns add "$NS_A"
ip netns add "$NS_B"
in_a ip link set lo up
in_b ip link set lo up
ip -n "$NS_A" link add "$VETH_A" type veth peer name "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VETH_A"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VETH_B"
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set "$VETH_B" up
wait_until 5 sh -c "ip -n $NS_A link show $VETH_A | grep -q LOWER_UP && ip -n $NS_B link show $VETH_B | grep -q LOWER_UP"

# 1. raw veth ----------------------------------------------------------------------------------
if wanted veth; then
    ORDER+=(veth)
    MTU[veth]=$(ip -n "$NS_A" -o link show "$VETH_A" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
    run_iperf veth "$ADDR_B" || true
fi

# Configures a userspace WireGuard pair (interfaces $1/$2, already created by the daemons) with wg.
wg_configure() {
    local ifa=$1 ifb=$2 mtu=$3
    local ka kb pa pb
    ka=$(wg genkey)
    kb=$(wg genkey)
    pa=$(echo "$ka" | wg pubkey)
    pb=$(echo "$kb" | wg pubkey)
    echo "$ka" >"$OUT/$ifa.key"
    echo "$kb" >"$OUT/$ifb.key"
    chmod 600 "$OUT/$ifa.key" "$OUT/$ifb.key"
    in_a wg set "$ifa" private-key "$OUT/$ifa.key" listen-port "$WG_PORT" \
        peer "$pb" allowed-ips "$TUN_ADDR_B/32" endpoint "$ADDR_B:$WG_PORT"
    in_b wg set "$ifb" private-key "$OUT/$ifb.key" listen-port "$WG_PORT" \
        peer "$pa" allowed-ips "$TUN_ADDR_A/32" endpoint "$ADDR_A:$WG_PORT"
    ip -n "$NS_A" addr add "$TUN_ADDR_A/24" dev "$ifa"
    ip -n "$NS_B" addr add "$TUN_ADDR_B/24" dev "$ifb"
    ip -n "$NS_A" link set "$ifa" mtu "$mtu" up
    ip -n "$NS_B" link set "$ifb" mtu "$mtu" up
    # No ping(8) needed: one UDP datagram into the tunnel starts the handshake; wait for it.
    in_a bash -c "echo hi >/dev/udp/$TUN_ADDR_B/9" || true
    wait_until 10 handshake_done "$ifa"
}

# True once interface $1 (in namespace A) has completed a handshake with its peer.
handshake_done() {
    in_a wg show "$1" latest-handshakes | awk '$2 > 0 { ok = 1 } END { exit !ok }'
}

# Runs one userspace WireGuard implementation: $1 name, $2 interface prefix, then the command
# (the interface name is appended).
bench_userspace_wg() {
    local name=$1 prefix=$2
    shift 2
    local ifa="${prefix}${TAG}a" ifb="${prefix}${TAG}b"
    WG_IFACES+=("$ifa" "$ifb")
    ORDER+=("$name")
    MTU[$name]=1420
    spawn "$NS_A" "$OUT/$name-a.log" "$@" "$ifa"
    local pa=$LAST_PID
    spawn "$NS_B" "$OUT/$name-b.log" "$@" "$ifb"
    local pb=$LAST_PID
    if ! wait_until 10 test -S "/var/run/wireguard/$ifa.sock" ||
        ! wait_until 10 test -S "/var/run/wireguard/$ifb.sock"; then
        NOTE[$name]="not available: UAPI socket did not appear (see $OUT/$name-*.log)"
    elif ! wg_configure "$ifa" "$ifb" 1420; then
        NOTE[$name]="not available: no handshake within 10 s"
    else
        TUN_IF_A=$ifa TUN_IF_B=$ifb
        run_iperf "$name" "$TUN_ADDR_B" "$pa" "$pb" || true
        TUN_IF_A="" TUN_IF_B=""
    fi
    stop_pid "$pa"
    stop_pid "$pb"
}

# 2. Debian's wireguard-go ---------------------------------------------------------------------
if wanted wireguard-go; then
    log "wireguard-go $(wireguard-go --version 2>/dev/null | head -1 | awk '{print $2}')"
    bench_userspace_wg wireguard-go wbg env \
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f
fi

# 3. boringtun-cli ----------------------------------------------------------------------------
if wanted boringtun; then
    BORINGTUN_BIN=${BORINGTUN_BIN:-$ROOT/target/bench-tools/bin/boringtun-cli}
    if [ ! -x "$BORINGTUN_BIN" ]; then
        log "installing boringtun-cli into target/bench-tools (once)"
        cargo install --quiet --root "$ROOT/target/bench-tools" boringtun-cli >"$OUT/boringtun-install.log" 2>&1 || true
    fi
    if [ -x "$BORINGTUN_BIN" ]; then
        log "$("$BORINGTUN_BIN" --version)"
        bench_userspace_wg boringtun wbt "${PRELOAD_ENV[@]}" "$BORINGTUN_BIN" -f --disable-drop-privileges \
            -l "$OUT/boringtun-internal.log"
    else
        ORDER+=(boringtun)
        NOTE[boringtun]="not available: cargo install boringtun-cli failed (see $OUT/boringtun-install.log)"
    fi
fi

# 4. weft --------------------------------------------------------------------------------------
UP_TO_DIRECT="-"
UP_TO_FIRST_PONG="-"
UP_TO_PATH_DIRECT="-"
WEFT_NOTE=""

bench_weft() {
    local weft=$WEFT_BIN
    if [ "${BENCH_NO_BUILD:-0}" != 1 ] && [ -z "${WEFT_BIN_SET:-}" ]; then
        log "cargo build --release -p weft"
        if ! cargo build --release -p weft >"$OUT/weft-build.log" 2>&1; then
            WEFT_NOTE="not available: cargo build --release -p weft failed (see $OUT/weft-build.log)"
            return
        fi
    fi
    if [ ! -x "$weft" ]; then
        WEFT_NOTE="not available: no weft binary at $weft"
        return
    fi
    # A private copy: other builds may replace target/release/weft while this runs.
    cp "$weft" "$OUT/weft"
    weft="$OUT/weft"
    if ! "$weft" daemon --help >/dev/null 2>&1; then
        WEFT_NOTE="not available: this weft binary has no \`daemon\` subcommand yet"
        return
    fi
    local data="$OUT/weft-server" sa="$OUT/weft-a" sb="$OUT/weft-b"
    local sock_a="$OUT/weft-a.sock" sock_b="$OUT/weft-b.sock"
    mkdir -p "$data" "$sa" "$sb"
    local url="http://$ADDR_A:8080"
    export WEFT_LOG=${WEFT_LOG:-info}
    spawn "$NS_A" "$OUT/weft-server.log" "$weft" server --listen "$ADDR_A:8080" --url "$url" --data-dir "$data"
    local srv=$LAST_PID
    if ! wait_until 30 in_a curl -sf --max-time 2 "$url/key?v=130"; then
        WEFT_NOTE="not available: weft server did not answer (see $OUT/weft-server.log)"
        return
    fi
    in_a "$weft" users create bench --data-dir "$data" >"$OUT/weft-admin.log" 2>&1 || {
        WEFT_NOTE="not available: weft users create failed (see $OUT/weft-admin.log)"
        return
    }
    local key
    key=$(in_a "$weft" authkeys create --user bench --reusable --data-dir "$data" 2>>"$OUT/weft-admin.log" |
        awk 'NF { last = $0 } END { print last }' | tr -d '[:space:]')
    [ -n "$key" ] || { WEFT_NOTE="not available: no auth key (see $OUT/weft-admin.log)"; return; }

    spawn "$NS_A" "$OUT/weft-daemon-a.log" "${PRELOAD_ENV[@]}" "$weft" --socket "$sock_a" daemon --state-dir "$sa" --tun "wft${TAG}a"
    local da=$LAST_PID
    spawn "$NS_B" "$OUT/weft-daemon-b.log" "${PRELOAD_ENV[@]}" "$weft" --socket "$sock_b" daemon --state-dir "$sb" --tun "wft${TAG}b"
    local db=$LAST_PID
    if ! wait_until 20 test -S "$sock_a" || ! wait_until 20 test -S "$sock_b"; then
        WEFT_NOTE="not available: weft daemon did not open its socket (see $OUT/weft-daemon-*.log)"
        return
    fi

    # `weft up` on both nodes at once; t0 is just before.
    local t0 t_first="" t_direct=""
    t0=$(date +%s.%N)
    in_a "$weft" --socket "$sock_a" up --login-server "$url" --auth-key "$key" --hostname bench-a --timeout 60 \
        >"$OUT/weft-up-a.log" 2>&1 &
    local ua=$!
    in_b "$weft" --socket "$sock_b" up --login-server "$url" --auth-key "$key" --hostname bench-b --timeout 60 \
        >"$OUT/weft-up-b.log" 2>&1 &
    local ub=$!
    if ! wait "$ua" || ! wait "$ub"; then
        WEFT_NOTE="not available: weft up failed (see $OUT/weft-up-*.log)"
        return
    fi
    local t_up ip_b
    t_up=$(date +%s.%N)
    ip_b=$(in_b "$weft" --socket "$sock_b" ip -4 2>>"$OUT/weft-admin.log" | head -1 | tr -d '[:space:]')
    [ -n "$ip_b" ] || { WEFT_NOTE="not available: \`weft ip -4\` printed nothing"; return; }
    log "weft: up in $(awk -v a="$t0" -v b="$t_up" 'BEGIN { printf "%.2f", b - a }') s, peer bench-b is $ip_b"

    # Ping until a direct pong (each `weft ping` stops by itself once direct, or after 10 tries).
    local deadline=$((SECONDS + 60)) line now
    : >"$OUT/weft-ping.log"
    while [ -z "$t_direct" ] && [ "$SECONDS" -lt "$deadline" ]; do
        while IFS= read -r line; do
            now=$(date +%s.%N)
            printf '%s %s\n' "$now" "$line" >>"$OUT/weft-ping.log"
            case "$line" in
                pong*) [ -n "$t_first" ] || t_first=$now ;;
            esac
            case "$line" in
                pong*DERP*) ;;
                pong*via*) t_direct=$now; break ;;
            esac
        done < <(in_a timeout 30 "$weft" --socket "$sock_a" ping -c 10 --timeout 2 "$ip_b" 2>&1)
        [ -n "$t_direct" ] || sleep 0.2
    done
    [ -z "$t_first" ] || UP_TO_FIRST_PONG=$(awk -v a="$t0" -v b="$t_first" 'BEGIN { printf "%.2f s", b - a }')
    if [ -z "$t_direct" ]; then
        WEFT_NOTE="not available: no direct pong within 60 s (see $OUT/weft-ping.log)"
        return
    fi
    UP_TO_DIRECT=$(awk -v a="$t0" -v b="$t_direct" 'BEGIN { printf "%.2f s", b - a }')
    # `weft ping` sends one ping a second, so the pong time is coarse: the daemon's own log says
    # when magicsock switched the path to direct.
    local ts
    ts=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/weft-daemon-a.log" | grep -m1 'path changed.*Direct' | awk '{ print $1 }')
    if [ -n "$ts" ] && ts=$(date -d "$ts" +%s.%N 2>/dev/null); then
        UP_TO_PATH_DIRECT=$(awk -v a="$t0" -v b="$ts" 'BEGIN { printf "%.2f s", b - a }')
    fi
    log "weft: first pong after $UP_TO_FIRST_PONG, first direct pong after $UP_TO_DIRECT"
    MTU[weft]=$(ip -n "$NS_A" -o link show "wft${TAG}a" 2>/dev/null | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
    TUN_IF_A="wft${TAG}a" TUN_IF_B="wft${TAG}b"
    run_iperf weft "$ip_b" "$da" "$db" || WEFT_NOTE="${NOTE[weft]:-iperf3 failed}"
    TUN_IF_A="" TUN_IF_B=""
    in_a "$weft" --socket "$sock_a" status >"$OUT/weft-status-a.txt" 2>&1 || true
    stop_pid "$da"
    stop_pid "$db"
    stop_pid "$srv"
}

if wanted weft; then
    ORDER+=(weft)
    if [ -n "${WEFT_BIN:-}" ]; then WEFT_BIN_SET=1; fi
    WEFT_BIN=${WEFT_BIN:-$ROOT/target/release/weft}
    bench_weft
    [ -z "$WEFT_NOTE" ] || NOTE[weft]=$WEFT_NOTE
fi

# ---------------------------------------------------------------------------------------------
# Report
ratio() {
    local a=${GBPS[$1]:-} b=${GBPS[$2]:-}
    if [ -n "$a" ] && [ -n "$b" ]; then
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else
        echo "-"
    fi
}

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
CORES=$(grep -c '^processor' /proc/cpuinfo)
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'), \`scripts/bench-dataplane.sh\`, iperf3 -t $SECONDS_PER_RUN, one TCP stream A -> B."
    [ -z "${BENCH_BIGBUF:-}" ] || echo "Experiment: UDP socket buffers forced to $BENCH_BIGBUF bytes in weft and boringtun-cli (not wireguard-go)."
    [ -z "${BENCH_TXQLEN:-}" ] || echo "Experiment: txqueuelen $BENCH_TXQLEN on all tunnel interfaces."
    echo "CPU: $CPU_MODEL, $CORES logical cores (/proc/cpuinfo); kernel $(uname -r); load average at the end: $LOAD."
    echo "Tunnel CPU = CPU time of both tunnel processes during the transfer, in % of one core; CPU s / GB ="
    echo "that CPU time in seconds divided by the gigabytes iperf3 carried (lower is better)."
    echo
    echo "UDP buffer errors = RcvbufErrors + SndbufErrors (/proc/net/snmp, both namespaces); TUN drops ="
    echo "packets the tunnel interfaces dropped (queue to the reader full, or refused), both ends."
    echo
    echo "| path | Gbit/s | vs wireguard-go | vs veth | tunnel CPU | CPU s / GB | TCP retransmits | UDP buffer errors | TUN drops | MTU |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for name in "${ORDER[@]}"; do
        if [ -n "${GBPS[$name]:-}" ]; then
            echo "| $name | ${GBPS[$name]} | $(ratio "$name" wireguard-go) | $(ratio "$name" veth) | ${CPU[$name]} | ${CPU_PKT[$name]:--} | ${RETR[$name]} | ${UDPERR[$name]} | ${TUNDROP[$name]} | ${MTU[$name]:-} |"
        else
            echo "| $name | ${NOTE[$name]:-not available} | | | | | | | | |"
        fi
    done
    if [ "${#PROF_PKTS[@]}" -gt 0 ]; then
        echo
        echo "Profile (BENCH_PERF=1: \`perf stat\` and \`perf record -e cpu-clock\` on both tunnel processes;"
        echo "a tunneled packet is one packet into or out of node A's tunnel interface, data or ACK; with"
        echo "offloads (weft) one such packet can be a TCP segment of up to 64 KiB;"
        echo "% of the tunnel processes' samples):"
        echo
        echo "| path | tunneled packets | syscalls / packet | context switches / packet | kernel | scheduler (finish_task_switch) | AEAD | malloc/free |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for name in "${ORDER[@]}"; do
            [ -n "${PROF_PKTS[$name]:-}" ] || continue
            echo "| $name | ${PROF_PKTS[$name]} | ${PROF_SYS[$name]:-} | ${PROF_CTX[$name]:-} | ${PROF_KERNEL[$name]} | ${PROF_SCHED[$name]} | ${PROF_CRYPTO[$name]} | ${PROF_ALLOC[$name]} |"
        done
    fi
    if wanted weft; then
        echo
        echo "weft binary built $(date -u -r "$WEFT_BIN" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo '?'); repository HEAD $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')."
        echo "weft: from \`weft up\` (both nodes at once) to the first \`weft ping\` pong: $UP_TO_FIRST_PONG;"
        echo "to the first direct pong: $UP_TO_DIRECT (\`weft ping\` pings once a second; node A's log shows"
        echo "the path switching to direct after $UP_TO_PATH_DIRECT)."
    fi
} >"$OUT/report.md"

cat "$OUT/report.md"

if [ "$UPDATE_DOCS" = 1 ]; then
    DOC="$ROOT/docs/benchmarks.md"
    BEGIN_MARK="<!-- dataplane-results:begin -->"
    END_MARK="<!-- dataplane-results:end -->"
    if [ -f "$DOC" ] && grep -qF "$BEGIN_MARK" "$DOC" && grep -qF "$END_MARK" "$DOC"; then
        awk -v b="$BEGIN_MARK" -v e="$END_MARK" -v f="$OUT/report.md" '
            $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
            $0 == e { skip = 0 }
            !skip { print }' "$DOC" >"$OUT/benchmarks.md.new"
        cat "$OUT/benchmarks.md.new" >"$DOC"
        log "updated the results block of docs/benchmarks.md"
    else
        log "docs/benchmarks.md has no $BEGIN_MARK ... $END_MARK block; not updated"
    fi
fi

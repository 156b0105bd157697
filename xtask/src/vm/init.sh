#!/bin/busybox sh
# /init of the `cargo xtask vmtest` guest (busybox ash, PID 1).
#
# Runs `observer check --verify`, then `observer run` once with the plan the
# kernel picks by itself and once per forced attach-method set, against real
# loopback traffic; then as root and as nobody, by --pid and by --comm, against
# connections it counts in the kernel's own socket table. Nothing here names
# the plan a kernel should pick: a run checks that the programs of whatever
# was picked fired. Reports on the serial console:
#   VMTEST-BEGIN/END <section>  raw output the host parses (check plan, verifier)
#   VMTEST-METHOD ...           the method each hook used, per run
#   VMTEST-CHECK ok|FAIL ...    one line per assertion, with the observed value
#   VMTEST-SUMMARY / VMTEST-RESULT: PASS|FAIL
# then powers off. Every wait is bounded; every process is stopped by PID.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /sys/fs/bpf
# The initramfs root is already writable memory. No tmpfs over /tmp: the
# test binaries and the observer are packed at the absolute paths compiled
# into the tests, which lie under /tmp when the checkout does.
chmod 1777 /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
# run_cnt in /proc/PID/fdinfo of a program only counts while this is on.
echo 1 > /proc/sys/kernel/bpf_stats_enabled
ip link set lo up
# The server of the privilege runs under a name of its own, so --comm matches
# it and never its clients (comm is the name the binary was executed as).
ln -s observer-demo /bin/demo-server
# Modules, dependencies first (lib/modules/order, written by the host):
# dummy, socket diagnostics (what `ss` and the sock_diag fallback read),
# veth, nf_tables and sch_netem for the integration tests' lab.
MODULE_ERRORS=""
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || MODULE_ERRORS="$MODULE_ERRORS $m"
done
# A black hole for SYNs: a dummy device drops everything it is given, so a
# connect() to 198.18.0.2 retransmits its SYN (RTO timer, tcp_retransmit_skb).
ip link add d0 type dummy && ip addr add 198.18.0.1/30 dev d0 && ip link set d0 up
# The host's iproute2, nftables and bpftool run with their own libraries;
# `ip netns` keeps its names in /run/netns.
mkdir -p /run/netns /var && ln -s /run /var/run

KERNEL=$(uname -r)
PASSED=0
FAILED=0
PIDS=""

# One integration test may run this long before it counts as failed (its
# own timeouts end it well before this when it fails; this bounds a hang).
TEST_LIMIT=300

up() { cut -d' ' -f1 /proc/uptime; }
ok() { PASSED=$((PASSED + 1)); echo "VMTEST-CHECK ok   $*"; }
fail() { FAILED=$((FAILED + 1)); echo "VMTEST-CHECK FAIL $*"; }

# wait_for TRIES STEP COMMAND...: true once COMMAND succeeds, tried at most TRIES times.
wait_for() {
    tries=$1 step=$2
    shift 2
    while [ "$tries" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        tries=$((tries - 1))
        sleep "$step"
    done
    return 1
}

# Not `wget -T`: Debian's static busybox 1.35 segfaults with it.
scrape() { timeout 5 wget -q -O /tmp/metrics.new "http://127.0.0.1:$1/metrics" && mv /tmp/metrics.new /tmp/metrics; }

# Value of one series (exact name with labels) in the last scrape; 0 if absent.
metric() { awk -v s="$1" '$1 == s { v = $2 } END { print (v == "" ? 0 : v) }' /tmp/metrics; }

at_least() { [ "$(metric "$1")" -ge "$2" ] 2>/dev/null; }

# scenario_done PORT WANT: scrapes; true once every series:minimum of WANT is reached.
scenario_done() {
    scrape "$1" || return 1
    for want in $2; do at_least "${want%:*}" "${want##*:}" || return 1; done
}

# stop PID SECONDS: SIGTERM, SIGKILL after SECONDS; reaps it and returns its
# exit status (0 = it exited cleanly on SIGTERM, 137 = it had to be killed).
stop() {
    kill "$1" 2>/dev/null
    (sleep "$2"; kill -9 "$1" 2>/dev/null) &
    watchdog=$!
    wait "$1"
    rc=$?
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    return $rc
}

stop_pids() {
    for p in $PIDS; do stop "$p" 3; done
    PIDS=""
}

# "name run_cnt" for every BPF program process $1 holds. The name comes from
# the JIT image's symbol, bpf_prog_<tag>_<name> in /proc/kallsyms (read once:
# it is long and slow to generate under emulation).
programs_of() {
    grep ' bpf_prog_' /proc/kallsyms >/tmp/bpf_syms
    for fd in /proc/"$1"/fd/*; do
        [ "$(readlink "$fd")" = "anon_inode:bpf-prog" ] || continue
        info=/proc/"$1"/fdinfo/${fd##*/}
        tag=$(awk '$1 == "prog_tag:" { print $2 }' "$info")
        cnt=$(awk '$1 == "run_cnt:" { print $2 }' "$info")
        name=$(awk -v p="bpf_prog_${tag}_" 'index($3, p) == 1 { print substr($3, length(p) + 1); exit }' /tmp/bpf_syms)
        echo "$name ${cnt:-0}"
    done
}

program_for() {
    case "$2" in
        sweep | procfs | sock_diag | none) echo "" ;; # nothing loaded into the kernel
        iter) if [ "$1" = owners ]; then echo observer_owners; else echo observer_sockets; fi ;;
        raw_tracepoint) echo "$1_raw_tp" ;;
        *) echo "$1_$2" ;;
    esac
}

# Series the traffic must produce, as series:minimum, given the method each
# hook ended up with in the last scrape: the socket gauge always, each event
# counter only where the hook feeding it is attached.
wanted_for_plan() {
    want='observer_tcp_sockets{state="established"}:2'
    attached() { [ "$(awk -v h="$1" 'index($1, "observer_probe_info{hook=\"" h "\"") == 1 && $2 == 1 && $1 !~ /method="none"/' /tmp/metrics)" != "" ]; }
    if attached state; then want="$want observer_connections_opened_total:3 observer_connections_closed_total:2"; fi
    if attached timer; then want="$want observer_zero_window_probes_total:1 observer_rto_timeouts_total:1"; fi
    if attached retransmit; then want="$want observer_retransmits_total:1"; fi
    echo "$want"
}

# run_case LABEL FORCED N: FORCED is passed as --probe-method pairs and must
# show in observer_probe_info; every other hook keeps what the kernel gave
# it. Whatever the plan, each chosen program must fire on the traffic, and
# the counters its hooks feed must move.
run_case() {
    label=$1 forced=$2 n=$3
    sport=$((9000 + n)) mport=$((9470 + n))
    echo "VMTEST-BEGIN run $label (uptime $(up) s)"
    observer-demo server --listen 127.0.0.1:$sport --interval-ms 20 >/tmp/server.out 2>&1 &
    server=$!
    PIDS="$server"
    if ! wait_for 100 0.1 grep -q LISTENING /tmp/server.out; then
        fail "$label: demo server did not start: $(cat /tmp/server.out)"
        stop_pids
        return
    fi
    args=""
    for pair in $forced; do args="$args --probe-method $pair"; done
    # Every demo process is a target here, the black-hole client included:
    # its SYN retransmissions are the RTO and retransmit events.
    # shellcheck disable=SC2086 # word splitting of $args is intended
    observer run --comm observer-demo --listen 127.0.0.1:$mport --interval 0.5 $args >/tmp/observer.log 2>&1 &
    obs=$!
    if ! wait_serving "$label" $mport "$obs"; then
        stop_pids
        echo "VMTEST-END run $label"
        return
    fi
    for pair in $forced; do
        hook=${pair%%=*} method=${pair#*=}
        if [ "$(metric "observer_probe_info{hook=\"$hook\",method=\"$method\"}")" = 1 ]; then
            ok "$label: forced $hook=$method is in use"
        else
            fail "$label: forced $hook=$method not in use; exported: $(grep '^observer_probe_info' /tmp/metrics | tr '\n' ' ')"
        fi
    done
    grep '^observer_probe_info' /tmp/metrics | sed -e 's/.*hook="\([a-z_]*\)",method="\([a-z_]*\)".*/\1 \2/' | sort >/tmp/plan
    while read -r hook method; do echo "VMTEST-METHOD kernel=$KERNEL run=$label hook=$hook method=$method"; done </tmp/plan
    wanted=$(wanted_for_plan)
    retrans_before=$(snmp_tcp RetransSegs)

    # Traffic: healthy readers (opens, sends, closes), a reader that never
    # reads (zero window: persist-timer probes), a connect into the black hole
    # (SYN retransmissions on the RTO timer).
    observer-demo client --connect 127.0.0.1:$sport --role healthy --count 2 --hold-secs 2 >/dev/null 2>&1 &
    PIDS="$PIDS $!"
    observer-demo client --connect 127.0.0.1:$sport --role slow --count 1 --hold-secs 60 >/dev/null 2>&1 &
    PIDS="$PIDS $!"
    observer-demo client --connect 198.18.0.2:9 --role healthy --count 1 --hold-secs 1 >/dev/null 2>&1 &
    PIDS="$PIDS $!"
    echo "  $label: serving at $(up) s; traffic started; waiting for $wanted"
    wait_for 50 0.5 scenario_done $mport "$wanted"
    echo "  $label: counters checked at $(up) s"
    scrape $mport
    for want in $wanted; do
        name=${want%:*} min=${want##*:}
        if at_least "$name" "$min"; then ok "$label: $name = $(metric "$name") >= $min"; else fail "$label: $name = $(metric "$name") < $min"; fi
    done

    # The kernel's own count bounds the observer's: every retransmission on
    # a target is one the kernel counted (nothing else runs in the guest).
    if grep -q '^retransmit ' /tmp/plan && ! grep -q '^retransmit none' /tmp/plan; then
        kernel_retrans=$(($(snmp_tcp RetransSegs) - retrans_before))
        seen=$(metric observer_retransmits_total)
        if [ "$seen" -ge 1 ] && [ "$seen" -le "$kernel_retrans" ] 2>/dev/null; then
            ok "$label: observer_retransmits_total = $seen, within the kernel's RetransSegs delta ($kernel_retrans)"
        else
            fail "$label: observer_retransmits_total = $seen, kernel's RetransSegs delta = $kernel_retrans"
        fi
    fi

    programs_of "$obs" >/tmp/programs
    echo "  $label: programs read at $(up) s"
    while read -r name cnt; do echo "VMTEST-PROGRAM kernel=$KERNEL run=$label program=$name run_cnt=$cnt"; done </tmp/programs
    want_progs=0
    while read -r hook method; do
        prog=$(program_for "$hook" "$method")
        [ -n "$prog" ] || continue
        want_progs=$((want_progs + 1))
        cnt=$(awk -v p="$prog" '$1 == p { print $2 }' /tmp/programs)
        if [ "${cnt:-0}" -gt 0 ] 2>/dev/null; then
            ok "$label: $hook=$method program $prog fired ($cnt runs)"
        else
            fail "$label: $hook=$method program $prog ${cnt:+ran $cnt times}${cnt:-is not loaded}"
        fi
    done </tmp/plan
    # Where the observer says it sweeps marked sockets, their iterator is
    # loaded too, and runs.
    if grep -q 'sweeps: the marked sockets' /tmp/observer.log; then
        want_progs=$((want_progs + 1))
        cnt=$(awk '$1 == "observer_marked" { print $2 }' /tmp/programs)
        if [ "${cnt:-0}" -gt 0 ] 2>/dev/null; then ok "$label: marked-socket iterator ran ($cnt runs)"; else fail "$label: marked-socket iterator ${cnt:+ran $cnt times}${cnt:-is not loaded}"; fi
    fi
    # Refused methods must leave nothing loaded: only the chosen programs remain.
    held=$(grep -c . /tmp/programs)
    if [ "$held" -eq "$want_progs" ]; then ok "$label: holds exactly $held programs"; else fail "$label: holds $held programs, expected $want_progs"; fi

    stop_observer "$label" "$obs"
    sed 's/^/  observer: /' /tmp/observer.log
    stop_pids
    echo "VMTEST-END run $label (uptime $(up) s)"
}

# wait_serving LABEL PORT PID: true once the agent answers /metrics (loading
# takes seconds under emulation); false, with its log, if it gave up.
wait_serving() {
    tries=900
    until scrape "$2" 2>/dev/null; do
        tries=$((tries - 1))
        if [ $tries -le 0 ] || ! kill -0 "$3" 2>/dev/null; then
            fail "$1: observer did not serve /metrics: $(tail -n 3 /tmp/observer.log | tr '\n' ' ')"
            sed 's/^/  observer: /' /tmp/observer.log
            stop "$3" 3
            return 1
        fi
        sleep 0.1
    done
}

# stop_observer LABEL PID: SIGTERM; it must exit 0 and leave no program loaded.
stop_observer() {
    stop "$2" 10
    rc=$?
    if [ $rc -eq 0 ]; then ok "$1: observer exits 0 on SIGTERM"; else fail "$1: observer exit status $rc after SIGTERM (137: killed after 10 s)"; fi
    # Programs are freed after their last reference; none may outlive the agent.
    if wait_for 50 0.1 sh -c "! awk '\$3 ~ /^bpf_prog_[0-9a-f]+_(send|close|state|timer|retransmit)_|_observer_sockets\$/' /proc/kallsyms | grep -q ."; then
        ok "$1: no program left loaded after exit"
    else
        fail "$1: programs still loaded after exit: $(awk '$3 ~ /^bpf_prog_/ { print $3 }' /proc/kallsyms | tr '\n' ' ')"
    fi
}

# Established connections whose local port is $1, in the kernel's own table
# (what `ss -tn state established sport = :$1` shows).
kernel_established() {
    hex=$(printf ':%04X' "$1")
    awk -v p="$hex" 'FNR > 1 && $4 == "01" && substr($2, length($2) - 4) == p { n++ } END { print n + 0 }' /proc/net/tcp /proc/net/tcp6
}

# A TCP counter of the kernel's own (/proc/net/snmp, what `nstat` reads).
snmp_tcp() { awk -v f="$1" '$1 == "Tcp:" { if (!n) { for (i = 2; i <= NF; i++) if ($i == f) c = i; n = 1 } else print $c }' /proc/net/snmp; }

# Whether capability bit $2 is set in the hex mask $1 (from /proc/PID/status).
has_cap() { [ $(( (0x$1 >> $2) & 1 )) -eq 1 ]; }

# priv_case LABEL WHO SELECT N: `observer run` as WHO (root, or nobody with
# the capabilities the systemd unit gives) watching the demo server by
# SELECT (pid or comm) while CLIENTS healthy clients hold connections to it.
# Sweeps must keep succeeding after the privilege drop, and the numbers must
# equal what the kernel's socket table says.
CLIENTS=3
NOBODY_CAPS=bpf,perfmon,sys_ptrace,dac_read_search
priv_case() {
    label=$1 who=$2 select=$3 n=$4
    sport=$((9000 + n)) mport=$((9470 + n))
    echo "VMTEST-BEGIN run $label (uptime $(up) s)"
    demo-server server --listen 127.0.0.1:$sport --interval-ms 100 --burst 1024 >/tmp/server.out 2>&1 &
    server=$!
    PIDS="$server"
    if ! wait_for 100 0.1 grep -q LISTENING /tmp/server.out; then
        fail "$label: demo server did not start: $(cat /tmp/server.out)"
        stop_pids
        return
    fi
    observer-demo client --connect 127.0.0.1:$sport --role healthy --count $CLIENTS --hold-secs 120 >/dev/null 2>&1 &
    PIDS="$PIDS $!"
    tries=100
    while [ "$(kernel_established $sport)" -ne $CLIENTS ] && [ $tries -gt 0 ]; do
        tries=$((tries - 1))
        sleep 0.1
    done
    case $select in
        pid) target="--pid $server" ;;
        comm) target="--comm demo-server" ;;
    esac
    case $who in
        root) runner="" ;;
        nobody) runner="observer-demo as-user --uid 65534 --gid 65534 --caps $NOBODY_CAPS --" ;;
    esac
    # shellcheck disable=SC2086 # word splitting of $runner and $target is intended
    $runner observer run $target --no-pin --listen 127.0.0.1:$mport --interval 0.3 >/tmp/observer.log 2>&1 &
    obs=$!
    if ! wait_serving "$label" $mport "$obs"; then
        stop_pids
        echo "VMTEST-END run $label"
        return
    fi
    uid=$(awk '$1 == "Uid:" { print $2 }' /proc/$obs/status)
    case "$who:$uid" in root:0 | nobody:65534) uid_ok=1 ;; *) uid_ok=0 ;; esac
    if [ $uid_ok = 1 ]; then
        ok "$label: observer runs as uid $uid"
    else
        fail "$label: observer runs as uid $uid, not as $who"
    fi
    first=$(metric observer_sweeps_total)
    # Sweeps after the drop: wait for several more.
    wait_for 60 0.5 sh -c "timeout 5 wget -q -O - http://127.0.0.1:$mport/metrics | awk '\$1 == \"observer_sweeps_total\" && \$2 >= $first + 5 { f = 1 } END { exit !f }'"
    scrape $mport
    later=$(metric observer_sweeps_total)
    if [ "$later" -ge $((first + 5)) ] 2>/dev/null; then ok "$label: sweeps increase ($first -> $later)"; else fail "$label: sweeps stuck ($first -> $later)"; fi
    errors=$(metric observer_sweep_errors_total)
    if [ "$errors" = 0 ]; then ok "$label: observer_sweep_errors_total = 0"; else fail "$label: observer_sweep_errors_total = $errors: $(grep 'sweep failed' /tmp/observer.log | tail -n 1)"; fi
    kernel=$(kernel_established $sport)
    est=$(metric 'observer_tcp_sockets{state="established"}')
    if [ "$est" = "$kernel" ] && [ "$kernel" = $CLIENTS ]; then
        ok "$label: established = $est = kernel's table ($kernel) = clients started ($CLIENTS)"
    else
        fail "$label: established = $est, kernel's table $kernel, clients started $CLIENTS"
    fi
    procs=$(metric observer_target_processes)
    if [ "$procs" = 1 ]; then ok "$label: exactly the server is a target (observer_target_processes = 1)"; else fail "$label: observer_target_processes = $procs, want 1 (the server only)"; fi
    # What the drop left: the status of the running agent.
    eff=$(awk '$1 == "CapEff:" { print $2 }' /proc/$obs/status)
    bnd=$(awk '$1 == "CapBnd:" { print $2 }' /proc/$obs/status)
    nnp=$(awk '$1 == "NoNewPrivs:" { print $2 }' /proc/$obs/status)
    echo "VMTEST-CAPS kernel=$KERNEL run=$label CapEff=$eff CapBnd=$bnd NoNewPrivs=$nnp"
    grep -E 'keeping capabilities|dropped [0-9]+ capabilities' /tmp/observer.log | sed 's/^/  /'
    # 38 = CAP_PERFMON, 21 = CAP_SYS_ADMIN: only loading needs them here
    # (the target shares the agent's network namespace).
    if ! has_cap "$eff" 38 && [ "$nnp" = 1 ]; then ok "$label: CAP_PERFMON dropped, no_new_privs set"; else fail "$label: after start-up CapEff=$eff NoNewPrivs=$nnp"; fi
    if [ "$who" = root ]; then
        # Root holds CAP_SETPCAP: the bounding set must be down to the effective one.
        if [ "$bnd" = "$eff" ]; then ok "$label: bounding set trimmed to the kept capabilities ($bnd)"; else fail "$label: CapBnd=$bnd, CapEff=$eff"; fi
    fi
    stop_observer "$label" "$obs"
    sed 's/^/  observer: /' /tmp/observer.log
    stop_pids
    echo "VMTEST-END run $label (uptime $(up) s)"
}

# Every process but this shell and the kernel's threads (after a test that
# timed out: its lab, servers, clients and observer), then the lab's namespaces.
kill_leftovers() {
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = 1 ] && continue
        [ -s "$p/cmdline" ] || continue
        kill -9 "$pid" 2>/dev/null
    done
    sleep 1
    observer-demo cleanup --name ot >/dev/null 2>&1
}

# run_tests: each test of each binary in /tests on its own (`--exact`), so a
# test that hangs or crashes costs only itself; one check per test, passed
# only if libtest ran exactly that test and it passed.
run_tests() {
    for bin in /tests/*; do
        [ -x "$bin" ] || continue
        suite=${bin##*/}
        "$bin" --list </dev/null 2>/dev/null | sed -n 's/: test$//p' >/tmp/tests.list
        if [ ! -s /tmp/tests.list ]; then
            fail "test $suite: the binary lists no tests"
            continue
        fi
        while read -r name; do
            start=$(up)
            echo "VMTEST-BEGIN test $suite::$name (uptime $start s)"
            { timeout "$TEST_LIMIT" "$bin" --exact "$name" --test-threads=1 </dev/null; echo $? >/tmp/test.rc; } 2>&1 |
                tee /tmp/test.out | sed 's/^/  test: /'
            rc=$(cat /tmp/test.rc)
            secs=$(awk -v a="$start" -v b="$(up)" 'BEGIN { printf "%.0f", b - a }')
            if [ "$rc" = 0 ] && grep -q '^test result: ok\. 1 passed; 0 failed; 0 ignored' /tmp/test.out; then
                ok "test $suite::$name passed in $secs s"
            else
                why=$(grep -m1 -E "panicked at|^thread '.*' panicked" -A2 /tmp/test.out | tr '\n' ' ' | cut -c1-400)
                [ "$rc" = 143 ] || [ "$rc" = 124 ] && why="timed out after $TEST_LIMIT s; $why"
                fail "test $suite::$name failed (exit $rc) in $secs s: $why"
                kill_leftovers
            fi
            echo "VMTEST-END test $suite::$name (uptime $(up) s)"
        done </tmp/tests.list
    done
}

echo "VMTEST-KERNEL $KERNEL"
if [ -z "$MODULE_ERRORS" ]; then ok "modules loaded: $(cat /lib/modules/order | tr '\n' ' ')"; else fail "insmod failed for:$MODULE_ERRORS"; fi
echo "VMTEST-BEGIN check"
observer check --verify 2>&1
rc=$?
echo "VMTEST-END check"
if [ $rc -eq 0 ]; then ok "observer check --verify exits 0"; else fail "observer check --verify exits $rc"; fi

# The plan this kernel picks by itself, then methods forced in turn where the
# kernel offers them (a forced method the kernel lacks is an error by design).
run_case auto "" 1
if [ -d /sys/bus/event_source/devices/kprobe ]; then
    run_case kprobe "send=kprobe close=kprobe timer=kprobe retransmit=kprobe state=raw_tracepoint" 2
else
    echo "VMTEST-NOTE kernel=$KERNEL: no kprobe PMU; kprobe run not applicable"
fi
run_case tp_btf "close=sweep timer=tp_btf retransmit=tp_btf state=tp_btf" 3
# Raw tracepoints, the methods without BTF typing; the send tracepoint
# exists from 6.3 (its BTF type names it).
raw="state=raw_tracepoint timer=raw_tracepoint retransmit=raw_tracepoint"
if grep -q btf_trace_sock_send_length /sys/kernel/btf/vmlinux; then raw="$raw send=raw_tracepoint"; fi
run_case raw_tracepoint "$raw" 4
# No eBPF at all: sockets polled through sock_diag (inet_diag/tcp_diag modules).
run_case sock_diag "sockets=sock_diag" 5

# Privilege drop: as root and as nobody, by PID and by name.
priv_case root-pid root pid 6
priv_case root-comm root comm 7
priv_case nobody-pid nobody pid 8
priv_case nobody-comm nobody comm 9

# The host's integration tests, against this kernel.
run_tests

echo "VMTEST-SUMMARY: $PASSED passed, $FAILED failed"
if [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]; then echo "VMTEST-RESULT: PASS"; else echo "VMTEST-RESULT: FAIL"; fi
sync
poweroff -f

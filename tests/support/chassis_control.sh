#!/bin/sh
# ipmi_sim's chassis_control hook (lan.conf: chassis_control "<this script> <state dir>"):
#
#   chassis_control.sh <state dir> get <parm>...        -> prints "<parm>:<value>" lines
#   chassis_control.sh <state dir> set <parm> <value>... -> prints nothing on success
#
# parm is power (0/1), reset (pulse 1), boot (none, pxe, default, cdrom, bios) or
# identify. The "machine" is the command line in <state dir>/power_on_cmd (default:
# a sleep), started in its own session on power on, killed on power off, restarted on
# reset; its pid is in <state dir>/pid, so tests can watch the process come and go.
# Every call is appended to <state dir>/calls.log.
set -u
dir=$1 op=$2
shift 2
echo "$op $*" >> "$dir/calls.log"

running() {
    [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

start() {
    running && return 0
    cmd="exec sleep 600"
    [ -f "$dir/power_on_cmd" ] && cmd=$(cat "$dir/power_on_cmd")
    setsid sh -c "$cmd" </dev/null >>"$dir/machine.log" 2>&1 &
    echo $! > "$dir/pid"
}

stop() {
    if running; then
        pid=$(cat "$dir/pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        n=0
        while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
}

case $op in
get)
    for parm in "$@"; do
        case $parm in
        power) if running; then echo "power:1"; else echo "power:0"; fi ;;
        boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
        esac
    done
    ;;
set)
    while [ $# -ge 2 ]; do
        parm=$1 val=$2
        shift 2
        case $parm in
        power) if [ "$val" = 1 ]; then start; else stop; fi ;;
        reset) if [ "$val" = 1 ]; then stop; start; fi ;;
        boot) echo "$val" > "$dir/boot" ;;
        identify) [ $# -ge 1 ] && shift ;;
        *) echo "Invalid parameter: $parm"; exit 1 ;;
        esac
    done
    ;;
*)
    echo "Unknown operation: $op"
    exit 1
    ;;
esac

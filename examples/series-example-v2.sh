#!/bin/sh
# The example of the series' ioasids documentation, on a cgroup-v2 hierarchy served by ioasidsd
# (`ioasidsd run --hierarchy v2`), step for step. Only the mount differs: the daemon has mounted
# the hierarchy at $MNT (default /sys/fs/cgroup/ioasids), where the document mounts cgroup2 on
# /mnt/cg2. "Do IOASID allocation via /dev/ioasid" is `ioasidctl alloc --hold`, which allocates
# as a real process and keeps its IOASIDs until it is killed; the process "with PID 1234" that
# holds one IOASID elsewhere is one such holder in a second cgroup, test2.
#
# Run it as root. It prints the two lines each step of the document shows, and exits non-zero
# as soon as a step does not give what the document says.
set -eu
MNT=${MNT:-/sys/fs/cgroup/ioasids}
IOASIDCTL=${IOASIDCTL:-ioasidctl}
holders=""
trap 'for p in $holders; do kill "$p" 2>/dev/null || true; done' EXIT

show() {
    echo "ioasids.current:$(cat "$MNT/test1/ioasids.current")"
    echo "ioasids.max:$(cat "$MNT/test1/ioasids.max")"
}
expect() {  # expect CURRENT: what ioasids.current of test1 must read now
    [ "$(cat "$MNT/test1/ioasids.current")" = "$1" ] || {
        echo "step failed: ioasids.current is $(cat "$MNT/test1/ioasids.current"), not $1" >&2
        exit 1
    }
}
hold() {  # hold N CGROUP: a process joins CGROUP, allocates N IOASIDs and keeps them
    fifo=$(mktemp -u)
    mkfifo "$fifo"
    sh -c 'echo $$ > "$1"; exec "$2" alloc -n "$3" --hold' sh "$MNT/$2/cgroup.procs" \
        "$IOASIDCTL" "$1" > "$fifo" &
    holders="$holders $!"
    last=$!
    i=0
    while [ "$i" -lt "$1" ]; do read -r _id; i=$((i + 1)); done < "$fifo"
    rm -f "$fifo"
}

# 1. The hierarchy is mounted at $MNT (the daemon did it).
# 2. Add the ioasids controller.
echo '+ioasids' > "$MNT/cgroup.subtree_control"

# 3. Create a hierarchy, set a non-zero limit (the default is 0).
mkdir "$MNT/test1"
echo 5 > "$MNT/test1/ioasids.max"

# The process "with PID 1234": it holds one IOASID in another cgroup with the controller.
mkdir "$MNT/test2"
echo 1 > "$MNT/test2/ioasids.max"
hold 1 test2
pid1234=$last

# 4. Allocations within the limit succeed.
echo $$ > "$MNT/test1/cgroup.procs"
hold 1 test1
show
expect 1

# 5. Allocations beyond the limit fail.
hold 4 test1
if "$IOASIDCTL" alloc -n 1 > /dev/null 2>&1; then
    echo "step failed: an allocation over ioasids.max succeeded" >&2
    exit 1
fi
show
expect 5

# 6. Moving a process that holds an IOASID into test1 may take it over its limit.
echo "$pid1234" > "$MNT/test1/cgroup.procs"
show
expect 6

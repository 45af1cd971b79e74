#!/usr/bin/env bash
# Transfer benchmark: one file over 127.0.0.1, printed figures (not a test, asserts nothing but cmp).
#
#   benches/transfer.sh            # 1 GiB file, 1 MiB pieces
#   SIZE_MIB=256 benches/transfer.sh
#   ONLY=kp benches/transfer.sh    # only kp-torrent -> kp-torrent (ONLY=lt: only libtorrent -> kp-torrent)
#
# Builds the release binary, makes a random file in a temporary folder (under $TMPDIR, default /tmp),
# creates its torrent with `kp-torrent create --piece-length 1M`, then for each seeder (libtorrent
# 2.0.8 through src/real/libtorrent_peer.py with Debian's /usr/bin/python3, then `kp-torrent seed`)
# runs `kp-torrent download --peer 127.0.0.1:PORT --bind 127.0.0.1 --quiet` under /usr/bin/time -v
# and prints MiB/s (file size / wall time of the whole download command, start-up included), the
# leecher's CPU seconds (user + sys), its peak RSS and the seeder's CPU seconds during the run, then
# compares the downloaded file with cmp. Everything stays on 127.0.0.1 (libtorrent: plaintext, no
# uTP, DHT, LSD, UPnP or NAT-PMP). The temporary folder is removed on exit. Note `uptime` next to
# the figures: other work on the machine changes the wall time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
ONLY=${ONLY:-}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/kp-torrent
PY=/usr/bin/python3

(cd "$ROOT" && cargo build --release -q -p kp-torrent)
[ -x /usr/bin/time ] || { echo "transfer.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kp-transfer.XXXXXX")
SEEDER_PID=
cleanup() {
	if [ -n "$SEEDER_PID" ]; then kill "$SEEDER_PID" 2>/dev/null || true; wait "$SEEDER_PID" 2>/dev/null || true; fi
	rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/seed"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$TMP/seed/data.bin"
"$BIN" create "$TMP/seed/data.bin" -o "$TMP/data.torrent" --piece-length 1M --no-date >/dev/null

# CPU seconds (user + sys) a running process has used so far, from /proc/PID/stat.
cpu_of() {
	local hz stat
	hz=$(getconf CLK_TCK)
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	# Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
	awk -v hz="$hz" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / hz }' <<<"$stat"
}

# A free TCP port on 127.0.0.1 (the kernel picks it; a tiny race before the seeder binds it).
free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listen() {
	local port=$1 i
	for i in $(seq 1 600); do
		ss -ltnH "sport = :$port" | grep -q . && return 0
		sleep 0.1
	done
	echo "transfer.sh: seeder did not listen on $port within 60 s" >&2
	exit 1
}

printf '%-24s %9s %8s %8s %10s %10s  %s\n' seeder MiB/s wall_s cpu_s rss_MiB seeder_cpu load
run_download() {
	local name=$1 port=$2 out=$TMP/dl
	rm -rf "$out"
	mkdir -p "$out"
	local seed_cpu0 seed_cpu1
	seed_cpu0=$(cpu_of "$SEEDER_PID")
	/usr/bin/time -v -o "$TMP/time.txt" "$BIN" download "$TMP/data.torrent" -d "$out" \
		--peer "127.0.0.1:$port" --bind 127.0.0.1 --port 0 --quiet
	seed_cpu1=$(cpu_of "$SEEDER_PID")
	local load
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	awk -v name="$name" -v mib="$SIZE_MIB" -v s0="$seed_cpu0" -v s1="$seed_cpu1" -v load="$load" -F': ' '
		/User time/ { user = $2 }
		/System time/ { sys = $2 }
		/Maximum resident set size/ { rss = $2 }
		/Elapsed \(wall clock\)/ {
			n = split($2, t, ":"); wall = 0
			for (i = 1; i <= n; i++) wall = wall * 60 + t[i]
		}
		END { printf "%-24s %9.0f %8.2f %8.2f %10.1f %10.2f  %s\n", name, mib / wall, wall, user + sys, rss / 1024, s1 - s0, load }
	' "$TMP/time.txt"
	cmp "$TMP/seed/data.bin" "$out/data.bin"
	rm -rf "$out"
}

if [ "$ONLY" != kp ]; then
	"$PY" "$ROOT/src/real/libtorrent_peer.py" --torrent "$TMP/data.torrent" --save "$TMP/seed" \
		--port 0 --encryption plaintext >"$TMP/lt.log" 2>&1 &
	SEEDER_PID=$!
	for i in $(seq 1 1200); do
		grep -q ' done$' "$TMP/lt.log" && break
		grep -q ' error ' "$TMP/lt.log" && { cat "$TMP/lt.log" >&2; exit 1; }
		kill -0 "$SEEDER_PID" 2>/dev/null || { cat "$TMP/lt.log" >&2; exit 1; }
		sleep 0.1
	done
	grep -q ' done$' "$TMP/lt.log" || { echo "transfer.sh: libtorrent did not start seeding" >&2; exit 1; }
	LT_PORT=$(awk '$2 == "port" { print $3; exit }' "$TMP/lt.log")
	run_download "libtorrent 2.0.8" "$LT_PORT"
	kill "$SEEDER_PID"
	wait "$SEEDER_PID" 2>/dev/null || true
	SEEDER_PID=
fi

if [ "$ONLY" != lt ]; then
	KP_PORT=$(free_port)
	"$BIN" seed "$TMP/data.torrent" -s "$TMP/seed" --port "$KP_PORT" --bind 127.0.0.1 --quiet &
	SEEDER_PID=$!
	wait_listen "$KP_PORT"
	run_download "kp-torrent" "$KP_PORT"
fi

#!/usr/bin/env bash
# uTP benchmark: one file over 127.0.0.1 through uTP, printed figures (asserts nothing but cmp).
#
#   benches/utp.sh               # 64 MiB file, 1 MiB pieces
#   SIZE_MIB=256 benches/utp.sh
#
# Builds the release binary and creates a random file and its torrent, then times four
# downloads of it, each under /usr/bin/time -v into a fresh folder, and compares each result
# with cmp:
#   1. libtorrent 2.0.8 seeder -> libtorrent leecher, both uTP only (TCP off): the reference;
#   2. libtorrent uTP-only seeder -> kp-torrent;
#   3. kp-torrent seeder -> kp-torrent (uTP, the default between two kp-torrents);
#   4. kp-torrent seeder -> kp-torrent --no-utp (TCP, for comparison).
# MiB/s is the file size over the wall time of the whole leecher command (start-up included:
# the libtorrent leecher is a Python process). CPU is the leecher's user + sys. Everything stays
# on 127.0.0.1 with DHT, LSD, UPnP, NAT-PMP and PEX off. Other work on the machine changes the
# wall time: note the load average printed with each line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-64}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/kp-torrent
PY=/usr/bin/python3
LT="$ROOT/src/real/libtorrent_peer.py"

(cd "$ROOT" && cargo build --release -q -p kp-torrent)
[ -x /usr/bin/time ] || { echo "utp.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
"$PY" -c 'import libtorrent' 2>/dev/null || { echo "utp.sh: python3-libtorrent is missing" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kp-utp.XXXXXX")
SEEDER_PID=
cleanup() {
	if [ -n "$SEEDER_PID" ]; then kill "$SEEDER_PID" 2>/dev/null || true; wait "$SEEDER_PID" 2>/dev/null || true; fi
	rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/seed"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$TMP/seed/data.bin"
"$BIN" create "$TMP/seed/data.bin" -o "$TMP/data.torrent" --piece-length 1M --no-date >/dev/null

free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_seeder() {
	if [ -n "$SEEDER_PID" ]; then kill "$SEEDER_PID" 2>/dev/null || true; wait "$SEEDER_PID" 2>/dev/null || true; fi
	SEEDER_PID=
}

# Starts a uTP-only libtorrent seeder; sets SEEDER_PID and PORT once it seeds.
lt_seeder() {
	"$PY" "$LT" --torrent "$TMP/data.torrent" --save "$TMP/seed" --port 0 --encryption plaintext \
		--transport utp --expect-complete >"$TMP/lt-seed.log" 2>&1 &
	touch "$TMP/lt-seed.log"
	SEEDER_PID=$!
	for _ in $(seq 1 1200); do
		grep -q ' done$' "$TMP/lt-seed.log" && break
		kill -0 "$SEEDER_PID" 2>/dev/null || { cat "$TMP/lt-seed.log" >&2; exit 1; }
		sleep 0.1
	done
	grep -q ' done$' "$TMP/lt-seed.log" || { echo "utp.sh: libtorrent did not start seeding" >&2; exit 1; }
	PORT=$(awk '$2 == "port" { print $3; exit }' "$TMP/lt-seed.log")
}

# Starts a kp-torrent seeder; sets SEEDER_PID and PORT once it seeds (its start-up check done).
kp_seeder() {
	PORT=$(free_port)
	"$BIN" seed "$TMP/data.torrent" -s "$TMP/seed" --port "$PORT" --bind 127.0.0.1 --no-dht \
		>"$TMP/kp-seed.log" 2>&1 &
	SEEDER_PID=$!
	for _ in $(seq 1 600); do
		grep -q 'seeding' "$TMP/kp-seed.log" && break
		kill -0 "$SEEDER_PID" 2>/dev/null || { cat "$TMP/kp-seed.log" >&2; exit 1; }
		sleep 0.1
	done
}

printf '%-40s %9s %8s %8s %10s  %s\n' run MiB/s wall_s cpu_s rss_MiB load
# timed NAME COMMAND...: runs the leecher command under /usr/bin/time and prints its line.
timed() {
	local name=$1 load
	shift
	rm -rf "$TMP/dl"
	mkdir -p "$TMP/dl"
	/usr/bin/time -v -o "$TMP/time.txt" "$@" >"$TMP/leecher.log" 2>&1 || { cat "$TMP/leecher.log" >&2; exit 1; }
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	awk -v name="$name" -v mib="$SIZE_MIB" -v load="$load" -F': ' '
		/User time/ { user = $2 }
		/System time/ { sys = $2 }
		/Maximum resident set size/ { rss = $2 }
		/Elapsed \(wall clock\)/ {
			n = split($2, t, ":"); wall = 0
			for (i = 1; i <= n; i++) wall = wall * 60 + t[i]
		}
		END { printf "%-40s %9.0f %8.2f %8.2f %10.1f  %s\n", name, mib / wall, wall, user + sys, rss / 1024, load }
	' "$TMP/time.txt"
	cmp "$TMP/seed/data.bin" "$TMP/dl/data.bin"
}

lt_seeder
timed "libtorrent -> libtorrent (uTP only)" "$PY" "$LT" --torrent "$TMP/data.torrent" \
	--save "$TMP/dl" --port 0 --encryption plaintext --transport utp --exit-when-done \
	--peer "127.0.0.1:$PORT"
timed "libtorrent (uTP only) -> kp-torrent" "$BIN" download "$TMP/data.torrent" -d "$TMP/dl" \
	--peer "127.0.0.1:$PORT" --bind 127.0.0.1 --port 0 --no-dht
grep -q '0 over TCP' "$TMP/leecher.log" || { echo "utp.sh: kp-torrent did not use uTP only" >&2; cat "$TMP/leecher.log" >&2; exit 1; }
stop_seeder

kp_seeder
timed "kp-torrent -> kp-torrent (uTP)" "$BIN" download "$TMP/data.torrent" -d "$TMP/dl" \
	--peer "127.0.0.1:$PORT" --bind 127.0.0.1 --port 0 --no-dht
grep -q '0 over TCP' "$TMP/leecher.log" || { echo "utp.sh: kp-torrent did not use uTP only" >&2; exit 1; }
timed "kp-torrent -> kp-torrent --no-utp (TCP)" "$BIN" download "$TMP/data.torrent" -d "$TMP/dl" \
	--peer "127.0.0.1:$PORT" --bind 127.0.0.1 --port 0 --no-dht --no-utp
stop_seeder

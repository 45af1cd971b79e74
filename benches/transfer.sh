#!/usr/bin/env bash
# Transfer benchmark: kp-torrent side by side with libtorrent, aria2 and ctorrent over 127.0.0.1.
# Prints figures and ratios; asserts nothing except that every downloaded file is identical (cmp).
#
#   benches/transfer.sh                        # 1 GiB file, 1 MiB pieces, every part
#   SIZE_MIB=256 benches/transfer.sh           # smaller file
#   PARTS=leech,seed benches/transfer.sh       # some of: leech seed swarm idle big
#   RUNS=3 SWARM_MIB=256 SWARM_LEECHERS=10 IDLE_CONNS=2000 BIG_MIB=4096 (the defaults)
#   KP_BIN=/path/to/kp-torrent benches/transfer.sh   # measure another build of kp-torrent
#                                                    # (this tree is still built, for idle_peers)
#
# Parts:
# - leech: one libtorrent 2.0.8 seeder (src/real/libtorrent_peer.py with Debian's /usr/bin/python3);
#   leechers kp-torrent, libtorrent, aria2c and ctorrent download the same torrent in turn, RUNS
#   times each, into a fresh folder, with `sync` before every run. kp-torrent and libtorrent get
#   the seeder's address directly; aria2c and ctorrent take no peer address, so they get it from a
#   tiny HTTP tracker (written by this script) that lists only the seeder.
# - seed: kp-torrent seeder, then a libtorrent seeder, each to one libtorrent leecher.
# - swarm: one kp-torrent seeder and SWARM_LEECHERS kp-torrent leechers of a SWARM_MIB file, started
#   at once and told each other's addresses (--peer); compared with one kp-torrent leecher alone
#   from the same seeder; the seeder's upload is counted in copies of the file. RUNS times (a
#   fresh seeder each time), the median shown.
# - idle: IDLE_CONNS connections that handshake and then stay silent, held open against a kp-torrent
#   seeder (the idle_peers helper, src/bin/idle_peers.rs): its RSS growth per connection and the
#   time a new peer waits for its handshake reply meanwhile.
# - big: one kp-torrent leecher of a BIG_MIB file (default 4 GiB, 1 MiB pieces) from a kp-torrent
#   seeder, once: its peak RSS must not grow with the torrent (needs about 2 x BIG_MIB of free
#   space under $TMPDIR).
#
# A seeder is used only once it is seeding: libtorrent once it prints "done" (its check finished),
# kp-torrent once it logs "checked, N of N pieces good" — not merely once its port listens (a
# seeder still checking answers slowly and spoils the figure).
# MiB/s = file size / wall time of the whole downloading command (start-up and final flush
# included); CPU s = user + sys of that process (/usr/bin/time -v), RSS its peak; each run's line
# also shows its context switches (voluntary + involuntary, all its threads) and "sync after":
# how long a `sync` right after the command took, i.e. the data the client left unwritten (a
# download that flushes before it exits, as kp-torrent's does, pays that inside its wall time;
# one that does not leaves it to the kernel). The tables show
# the median of RUNS runs (and the spread). Everything stays on 127.0.0.1: libtorrent plaintext,
# TCP only (kp-torrent with --no-utp, so it does not first spend a second on a uTP dial that
# libtorrent leaves unanswered; benches/utp.sh measures uTP); DHT, LSD, UPnP, NAT-PMP and PEX
# off in every client. The temporary folder (under
# $TMPDIR, default /tmp) is removed on exit. Other work on the machine changes the figures: the
# load average is printed with them.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
PARTS=${PARTS:-leech,seed,swarm,idle,big}
BIG_MIB=${BIG_MIB:-4096}
SWARM_MIB=${SWARM_MIB:-256}
SWARM_LEECHERS=${SWARM_LEECHERS:-10}
IDLE_CONNS=${IDLE_CONNS:-2000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${KP_BIN:-$TARGET/release/kp-torrent}
IDLE_BIN=$TARGET/release/idle_peers
PY=/usr/bin/python3

has_part() { [[ ",$PARTS," == *",$1,"* ]]; }

for tool in /usr/bin/time aria2c ctorrent ss; do
	command -v "$tool" >/dev/null || { echo "transfer.sh: $tool is missing" >&2; exit 1; }
done
"$PY" -c 'import libtorrent' || { echo "transfer.sh: python3-libtorrent is missing" >&2; exit 1; }
(cd "$ROOT" && cargo build --release -q -p kp-torrent && cargo build --release -q -p kp-torrent-tests --bin idle_peers)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kp-transfer.XXXXXX")
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

RESULTS=$TMP/results.txt # one line per run: "PART NAME MIB_S WALL CPU RSS_MIB OTHER_CPU SWITCHES SYNC_AFTER"
: >"$RESULTS"

load() { cut -d' ' -f1-3 /proc/loadavg; }

# CPU seconds (user + sys) a running process has used so far, from /proc/PID/stat.
cpu_of() {
	local hz stat
	hz=$(getconf CLK_TCK)
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	# Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
	awk -v hz="$hz" '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / hz }' <<<"$stat"
}

# A free TCP port on 127.0.0.1 (the kernel picks it; a tiny race before the program binds it).
free_port() {
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 120 s) until FILE holds a line matching REGEX while PID lives.
wait_for_line() {
	local file=$1 regex=$2 pid=$3 what=$4 i
	for i in $(seq 1 1200); do
		grep -Eq "$regex" "$file" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; echo "transfer.sh: $what exited" >&2; exit 1; }
		sleep 0.1
	done
	cat "$file" >&2
	echo "transfer.sh: $what not ready within 120 s" >&2
	exit 1
}

wait_listen() {
	local port=$1 i
	for i in $(seq 1 600); do
		ss -ltnH "sport = :$port" | grep -q . && return 0
		sleep 0.1
	done
	echo "transfer.sh: nothing listens on $port within 60 s" >&2
	exit 1
}

make_torrent() { # NAME MIB -> $TMP/NAME/data.bin, $TMP/NAME.torrent
	mkdir -p "$TMP/$1"
	head -c $(($2 * 1024 * 1024)) /dev/urandom >"$TMP/$1/data.bin"
	"$BIN" create "$TMP/$1/data.bin" -o "$TMP/$1.torrent" --piece-length 1M --no-date >/dev/null
}

# Starts a libtorrent seeder of TORRENT from DIR; sets LT_PID and LT_PORT once it seeds.
start_lt_seeder() {
	local log=$TMP/lt-seed.log
	"$PY" "$ROOT/src/real/libtorrent_peer.py" --torrent "$1" --save "$2" \
		--port 0 --encryption plaintext >"$log" 2>&1 &
	LT_PID=$!
	PIDS+=("$LT_PID")
	wait_for_line "$log" ' done$' "$LT_PID" "libtorrent seeder"
	grep -q ' error ' "$log" && { cat "$log" >&2; exit 1; }
	LT_PORT=$(awk '$2 == "port" { print $3; exit }' "$log")
}

# Starts a kp-torrent seeder of TORRENT from DIR (extra options after); sets KP_PID, KP_PORT and
# KP_LOG once its start-up check found every piece.
start_kp_seeder() {
	local torrent=$1 dir=$2
	shift 2
	KP_PORT=$(free_port)
	KP_LOG=$TMP/kp-seed-$KP_PORT.log
	RUST_LOG=info "$BIN" seed "$torrent" -s "$dir" --port "$KP_PORT" --bind 127.0.0.1 \
		--no-dht --no-pex --no-utp "$@" >"$KP_LOG" 2>&1 &
	KP_PID=$!
	PIDS+=("$KP_PID")
	wait_listen "$KP_PORT"
	local pieces
	pieces=$(( ($(stat -c %s "$dir/data.bin") + 1048575) / 1048576 ))
	wait_for_line "$KP_LOG" "checked, $pieces of $pieces pieces good" "$KP_PID" "kp-torrent seeder"
}

# Stops PID with SIGTERM (kp-torrent takes it like Ctrl-C and prints its summary; a background
# job of a script ignores SIGINT), SIGKILL after 20 s.
stop() {
	local i
	kill -TERM "$1" 2>/dev/null || true
	for i in $(seq 1 200); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# A tracker that answers every announce with the peers given on its command line (compact, IPv4;
# ctorrent ignores a reply without "complete" and "incomplete").
cat >"$TMP/tracker.py" <<'EOF'
import http.server, socket, struct, sys
peers = b"".join(socket.inet_aton(h) + struct.pack(">H", int(p)) for h, p in (a.rsplit(":", 1) for a in sys.argv[2:]))
body = b"d8:completei1e10:incompletei0e8:intervali1800e5:peers%d:%se" % (len(peers), peers)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF

# Runs a download command under /usr/bin/time -v, checks the file, appends a result line.
# PART NAME OUTDIR OTHER_PID(seeder whose CPU to count, or 0) -- COMMAND...
timed() {
	local part=$1 name=$2 out=$3 other=$4 mib=$5
	shift 6
	rm -rf "$out"
	mkdir -p "$out"
	sync
	local c0 c1=0
	c0=$(cpu_of "$other")
	if [ -z "${DONE_LINE:-}" ]; then
		if ! /usr/bin/time -v -o "$TMP/time.txt" "$@" >"$TMP/client.log" 2>&1; then
			tail -20 "$TMP/client.log" >&2
			echo "transfer.sh: $name failed" >&2
			exit 1
		fi
	else
		# A client that lingers after finishing (ctorrent announces "completed" 15 s later):
		# stop it with SIGKILL once it logs DONE_LINE; its data is in the page cache by then.
		/usr/bin/time -v -o "$TMP/time.txt" "$@" >"$TMP/client.log" 2>&1 &
		local tpid=$! child="" i
		for i in $(seq 1 6000); do
			[ -n "$child" ] || child=$(pgrep -P "$tpid" || true)
			grep -q "$DONE_LINE" "$TMP/client.log" && break
			kill -0 "$tpid" 2>/dev/null || break
			sleep 0.02
		done
		grep -q "$DONE_LINE" "$TMP/client.log" || { tail -20 "$TMP/client.log" >&2; echo "transfer.sh: $name did not finish" >&2; exit 1; }
		[ -z "$child" ] || kill -KILL "$child" 2>/dev/null || true
		wait "$tpid" 2>/dev/null || true
	fi
	c1=$(cpu_of "$other")
	# What the client left for the kernel to write: a `sync` right after it (kp-torrent flushes
	# its data before it exits; a client that does not leaves it dirty in the page cache).
	local f0 f1
	f0=$(date +%s.%N)
	sync
	f1=$(date +%s.%N)
	cmp "$SRC_FILE" "$out/data.bin"
	awk -v part="$part" -v name="$name" -v mib="$mib" -v s0="$c0" -v s1="$c1" -v f0="$f0" -v f1="$f1" -F': ' '
		/User time/ { user = $2 }
		/System time/ { sys = $2 }
		/Maximum resident set size/ { rss = $2 }
		/Voluntary context switches/ { vcs = $2 }
		/Involuntary context switches/ { ics = $2 }
		/Elapsed \(wall clock\)/ {
			n = split($2, t, ":"); wall = 0
			for (i = 1; i <= n; i++) wall = wall * 60 + t[i]
		}
		END { printf "%s %s %.1f %.2f %.2f %.1f %.2f %d %.2f\n", part, name, mib / wall, wall, user + sys, rss / 1024, s1 - s0, vcs + ics, f1 - f0 }
	' "$TMP/time.txt" | tee -a "$RESULTS" | awk -v load="$(load)" '{ printf "  run: %-10s %8s MiB/s %7s s %6s CPU s %7s MiB  other CPU %s s  %7s switches  sync after %s s  load %s\n", $2, $3, $4, $5, $6, $7, $8, $9, load }'
	rm -rf "$out"
}

echo "kp-torrent transfer benchmark: $(nproc) cores, $(uname -r), SIZE_MIB=$SIZE_MIB RUNS=$RUNS PARTS=$PARTS, load $(load)"

if has_part leech || has_part seed; then
	make_torrent main "$SIZE_MIB"
	SRC_FILE=$TMP/main/data.bin
	T=$TMP/main.torrent
fi

if has_part leech; then
	echo "leech: $SIZE_MIB MiB from one libtorrent seeder"
	start_lt_seeder "$T" "$TMP/main"
	TRACKER_PORT=$(free_port)
	"$PY" "$TMP/tracker.py" "$TRACKER_PORT" "127.0.0.1:$LT_PORT" &
	PIDS+=("$!")
	wait_listen "$TRACKER_PORT"
	URL=http://127.0.0.1:$TRACKER_PORT/announce
	# ctorrent wants an announce URL in the file: the same info dictionary (same info-hash) with
	# one added ("announce" sorts before every other top-level key).
	"$PY" -c 'import sys; d = open(sys.argv[1], "rb").read(); u = sys.argv[2].encode(); open(sys.argv[3], "wb").write(b"d8:announce%d:%s" % (len(u), u) + d[1:])' \
		"$T" "$URL" "$TMP/main-announce.torrent"
	for run in $(seq 1 "$RUNS"); do
		timed leech kp-torrent "$TMP/dl" "$LT_PID" "$SIZE_MIB" -- \
			"$BIN" download "$T" -d "$TMP/dl" --peer "127.0.0.1:$LT_PORT" --bind 127.0.0.1 --port 0 \
			--no-dht --no-pex --no-utp --quiet
		timed leech libtorrent "$TMP/dl" "$LT_PID" "$SIZE_MIB" -- \
			"$PY" "$ROOT/src/real/libtorrent_peer.py" --torrent "$T" --save "$TMP/dl" --port 0 \
			--encryption plaintext --peer "127.0.0.1:$LT_PORT" --exit-when-done
		timed leech aria2 "$TMP/dl" "$LT_PID" "$SIZE_MIB" -- \
			aria2c --no-conf=true --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
			--enable-peer-exchange=false --interface=127.0.0.1 --disable-ipv6=true \
			--file-allocation=none --bt-exclude-tracker='*' --bt-tracker="$URL" --seed-time=0 \
			--listen-port="$(free_port)" --summary-interval=0 --console-log-level=warn \
			--bt-require-crypto=false --dir="$TMP/dl" "$T"
		# ctorrent never dials a peer on its own -i address, so it listens on 127.0.0.2 (still
		# loopback). -e 0: no seeding; it is stopped once it prints "Download complete."
		DONE_LINE='Download complete' timed leech ctorrent "$TMP/dl" "$LT_PID" "$SIZE_MIB" -- \
			ctorrent -e 0 -i 127.0.0.2 -p "$(free_port)" -s "$TMP/dl/data.bin" "$TMP/main-announce.torrent"
	done
	stop "$LT_PID"
fi

if has_part seed; then
	echo "seed: $SIZE_MIB MiB to one libtorrent leecher"
	for run in $(seq 1 "$RUNS"); do
		start_kp_seeder "$T" "$TMP/main" --quiet
		timed seed kp-torrent "$TMP/dl" "$KP_PID" "$SIZE_MIB" -- \
			"$PY" "$ROOT/src/real/libtorrent_peer.py" --torrent "$T" --save "$TMP/dl" --port 0 \
			--encryption plaintext --peer "127.0.0.1:$KP_PORT" --exit-when-done
		stop "$KP_PID"
		start_lt_seeder "$T" "$TMP/main"
		timed seed libtorrent "$TMP/dl" "$LT_PID" "$SIZE_MIB" -- \
			"$PY" "$ROOT/src/real/libtorrent_peer.py" --torrent "$T" --save "$TMP/dl" --port 0 \
			--encryption plaintext --peer "127.0.0.1:$LT_PORT" --exit-when-done
		stop "$LT_PID"
	done
fi

if has_part swarm || has_part idle; then
	make_torrent swarm "$SWARM_MIB"
	ST=$TMP/swarm.torrent
fi

if has_part swarm; then
	echo "swarm: 1 kp-torrent seeder, $SWARM_LEECHERS kp-torrent leechers, $SWARM_MIB MiB"
	SRC_FILE=$TMP/swarm/data.bin
	for run in $(seq 1 "$RUNS"); do
		start_kp_seeder "$ST" "$TMP/swarm"
		SEED_ADDR=127.0.0.1:$KP_PORT
		timed single kp-torrent "$TMP/dl" "$KP_PID" "$SWARM_MIB" -- \
			"$BIN" download "$ST" -d "$TMP/dl" --peer "$SEED_ADDR" --bind 127.0.0.1 --port 0 \
			--no-dht --no-pex --no-utp --quiet
		stop "$KP_PID"
		SINGLE_UPLOADED=$(sed -n 's/.*uploaded .* (\([0-9]*\) bytes).*/\1/p' "$KP_LOG" | tail -1)
		start_kp_seeder "$ST" "$TMP/swarm"
		SEED_ADDR=127.0.0.1:$KP_PORT
		ports=()
		for i in $(seq 1 "$SWARM_LEECHERS"); do ports+=("$(free_port)"); done
		sync
		seed_cpu0=$(cpu_of "$KP_PID")
		start=$(date +%s.%N)
		lpids=()
		for i in $(seq 0 $((SWARM_LEECHERS - 1))); do
			others=()
			for j in $(seq 0 $((SWARM_LEECHERS - 1))); do
				[ "$i" = "$j" ] || others+=(--peer "127.0.0.1:${ports[$j]}")
			done
			mkdir -p "$TMP/swarm-dl/$i"
			# --seed: a finished leecher keeps serving the others, as in a real swarm.
			RUST_LOG=info "$BIN" download "$ST" -d "$TMP/swarm-dl/$i" --seed --peer "$SEED_ADDR" \
				"${others[@]}" --bind 127.0.0.1 --port "${ports[$i]}" --no-dht --no-pex --no-utp \
				>"$TMP/swarm-dl/$i.log" 2>&1 &
			lpids+=("$!")
			PIDS+=("$!")
		done
		unset finished
		declare -A finished=()
		for step in $(seq 1 6000); do
			for i in $(seq 0 $((SWARM_LEECHERS - 1))); do
				if [ -z "${finished[$i]:-}" ] && grep -q 'download complete' "$TMP/swarm-dl/$i.log"; then
					finished[$i]=$(date +%s.%N)
				fi
			done
			[ "${#finished[@]}" = "$SWARM_LEECHERS" ] && break
			sleep 0.05
		done
		[ "${#finished[@]}" = "$SWARM_LEECHERS" ] || { echo "transfer.sh: swarm not done in 300 s" >&2; exit 1; }
		seed_cpu1=$(cpu_of "$KP_PID")
		for p in "${lpids[@]}"; do stop "$p"; done
		stop "$KP_PID"
		for i in $(seq 0 $((SWARM_LEECHERS - 1))); do cmp "$SRC_FILE" "$TMP/swarm-dl/$i/data.bin"; done
		uploaded=$(sed -n 's/.*uploaded .* (\([0-9]*\) bytes).*/\1/p' "$KP_LOG" | tail -1)
		last=0
		for i in "${!finished[@]}"; do
			last=$(awk -v a="$last" -v b="${finished[$i]}" -v s="$start" 'BEGIN { d = b - s; print (d > a ? d : a) }')
		done
		echo "swarm $SWARM_LEECHERS $last ${uploaded:-0} $((SWARM_MIB * 1048576)) $(awk -v a="$seed_cpu0" -v b="$seed_cpu1" 'BEGIN { print b - a }')" >>"$RESULTS"
		echo "  swarm: last leecher done after $last s, seeder uploaded $uploaded bytes (single run: ${SINGLE_UPLOADED:-?}), load $(load)"
		echo "  swarm: each leecher done after (s): $(for i in "${!finished[@]}"; do awk -v b="${finished[$i]}" -v s="$start" 'BEGIN { printf "%.2f\n", b - s }'; done | sort -g | tr '\n' ' ')"
		rm -rf "$TMP/swarm-dl"
	done
fi

if has_part idle; then
	echo "idle: $IDLE_CONNS idle connections to a kp-torrent seeder"
	ulimit -n $((IDLE_CONNS + 1024))
	start_kp_seeder "$ST" "$TMP/swarm" --quiet --max-peers $((IDLE_CONNS + 100)) --max-connections $((IDLE_CONNS + 100))
	INFO_HASH=$("$PY" -c 'import libtorrent as lt, sys; print(lt.torrent_info(sys.argv[1]).info_hashes().v1)' "$ST")
	"$IDLE_BIN" --addr "127.0.0.1:$KP_PORT" --info-hash "$INFO_HASH" --pid "$KP_PID" \
		--conns "$IDLE_CONNS" --probes 20 >"$TMP/idle.txt"
	stop "$KP_PID"
	sed 's/^/  /' "$TMP/idle.txt"
fi

# ---- tables ----
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
spread() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%s–%s", lo, hi }'; }
field() { awk -v p="$1" -v n="$2" -v f="$3" '$1 == p && $2 == n { print $f }' "$RESULTS"; }
row() { # PART NAME LABEL
	local m w c r o
	m=$(field "$1" "$2" 3 | median)
	w=$(field "$1" "$2" 4 | median)
	c=$(field "$1" "$2" 5 | median)
	r=$(field "$1" "$2" 6 | median)
	o=$(field "$1" "$2" 7 | median)
	printf '| %s | %s (%s) | %s | %s (%s) | %s | %s | %s |\n' "$3" "$m" "$(field "$1" "$2" 3 | spread)" "$w" \
		"$c" "$(field "$1" "$2" 5 | spread)" "$r" "$o" "$(field "$1" "$2" 9 | median)"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
best_of() { # PART FIELD max|min NAME... -> the best median among NAMEs
	local part=$1 f=$2 how=$3 best="" v
	shift 3
	for n in "$@"; do
		v=$(field "$part" "$n" "$f" | median)
		[ "$v" = - ] && continue
		if [ -z "$best" ] || awk -v v="$v" -v b="$best" -v h="$how" 'BEGIN { exit !((h == "max" && v > b) || (h == "min" && v < b)) }'; then
			best=$v
		fi
	done
	echo "${best:-0}"
}

if has_part big; then
	echo "big: $BIG_MIB MiB from one kp-torrent seeder"
	make_torrent big "$BIG_MIB"
	SRC_FILE=$TMP/big/data.bin
	start_kp_seeder "$TMP/big.torrent" "$TMP/big" --quiet
	timed big kp-torrent "$TMP/dl" "$KP_PID" "$BIG_MIB" -- \
		"$BIN" download "$TMP/big.torrent" -d "$TMP/dl" --peer "127.0.0.1:$KP_PORT" --bind 127.0.0.1 \
		--port 0 --no-dht --no-pex --no-utp --quiet
	stop "$KP_PID"
	rm -rf "$TMP/big"
fi

echo
echo "Results ($(date -u '+%Y-%m-%d %H:%M UTC'), load $(load)); median of $RUNS runs (range):"
if has_part leech; then
	echo
	echo "Leeching $SIZE_MIB MiB from one libtorrent 2.0.8 seeder"
	echo
	echo "| leecher | MiB/s | wall s | CPU s | peak RSS MiB | seeder CPU s | sync after s |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	row leech kp-torrent "kp-torrent"
	row leech libtorrent "libtorrent 2.0.8"
	row leech aria2 "aria2 1.36"
	row leech ctorrent "ctorrent dnh3.3.2"
fi
if has_part seed; then
	echo
	echo "Seeding $SIZE_MIB MiB to one libtorrent 2.0.8 leecher (CPU s and RSS are the leecher's)"
	echo
	echo "| seeder | MiB/s | wall s | leecher CPU s | leecher RSS MiB | seeder CPU s | sync after s |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	row seed kp-torrent "kp-torrent"
	row seed libtorrent "libtorrent 2.0.8"
fi
echo
echo "Ratios (goals in brackets):"
if has_part leech; then
	best=$(best_of leech 3 max libtorrent aria2 ctorrent)
	low=$(best_of leech 5 min libtorrent aria2 ctorrent)
	echo "  leech MiB/s, kp / best other:   $(ratio "$(field leech kp-torrent 3 | median)" "$best") [>= 1.5]"
	echo "  leech CPU s, kp / lowest other: $(ratio "$(field leech kp-torrent 5 | median)" "$low") [<= 0.55]"
	echo "  leech peak RSS MiB, kp:         $(field leech kp-torrent 6 | median) [<= 16]"
fi
if has_part seed; then
	echo "  seed MiB/s, kp / libtorrent:    $(ratio "$(field seed kp-torrent 3 | median)" "$(field seed libtorrent 3 | median)") [>= 1]"
	echo "  seed CPU s, kp / libtorrent:    $(ratio "$(field seed kp-torrent 7 | median)" "$(field seed libtorrent 7 | median)") [<= 0.5]"
fi
if has_part swarm; then
	n=$SWARM_LEECHERS
	last=$(awk '$1 == "swarm" { print $3 }' "$RESULTS" | median)
	copies=$(awk '$1 == "swarm" { printf "%.2f\n", ($5 > 0 ? $4 / $5 : 0) }' "$RESULTS")
	scpu=$(awk '$1 == "swarm" { print $6 }' "$RESULTS" | median)
	single=$(field single kp-torrent 4 | median)
	echo "  swarm: $n leechers done in $last s ($(awk '$1 == "swarm" { print $3 }' "$RESULTS" | spread)), one alone in $single s: $(ratio "$last" "$single")x [<= 2]; seeder uploaded $(echo "$copies" | median) copies ($(echo "$copies" | spread)) [< 3], seeder CPU $scpu s"
fi
if has_part big; then
	echo "  big: $BIG_MIB MiB leeched at $(field big kp-torrent 3 | median) MiB/s, $(field big kp-torrent 5 | median) CPU s, peak RSS $(field big kp-torrent 6 | median) MiB [<= 16]"
fi
if has_part idle; then
	echo "  idle: $(awk '$1 == "kib_per_conn" { print $2 }' "$TMP/idle.txt") KiB per idle connection [<= 10], handshake reply median $(awk '$1 == "reply_ms_median" { print $2 }' "$TMP/idle.txt") ms, max $(awk '$1 == "reply_ms_max" { print $2 }' "$TMP/idle.txt") ms [<= 10], $(awk '$1 == "idle_still_open" { print $2 }' "$TMP/idle.txt") of $IDLE_CONNS still open"
fi

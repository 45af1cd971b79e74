# One libtorrent peer for kp-torrent's tests: seeds or downloads a single torrent (a .torrent file
# or a magnet URI) on 127.0.0.1, or (with neither, and --dht) is a bare DHT node.
# Written to a temp dir and run with Debian's /usr/bin/python3 by src/real/libtorrent.rs.
# Output lines (stdout, flushed), each "SECONDS_SINCE_START KEYWORD ...": "infohash HEX",
# "port N", "progress HAVE TOTAL STATE PEERS" (TOTAL is 0 while a magnet has no metadata),
# "metadata" (a magnet's info dictionary arrived), "peers [IP:PORT/SOURCE ...]" (the connected
# peers, whenever that set changes; SOURCE is libtorrent's peer_source_flags bitmask),
# "encryption [IP:PORT/KIND ...]" (the same peers, KIND "rc4", "plaintext" (an MSE handshake,
# then clear text) or "none", whenever that changes),
# "alert KIND: TEXT", "done" (every piece verified), "error TEXT" (then exit status 2 or 3),
# and with --dht "udp-port N" (the DHT's port) and "dht NODES" (its routing table's size,
# whenever that changes).
# With --commands FILE it reads lines appended to FILE: "connect IP:PORT" dials that peer (and
# keeps redialling it like a --peer), acknowledged with "command connect IP:PORT".
import argparse
import sys
import time
import warnings

import libtorrent as lt

ap = argparse.ArgumentParser()
src = ap.add_mutually_exclusive_group()
src.add_argument("--torrent")
src.add_argument("--magnet")
ap.add_argument("--save", required=True)
ap.add_argument("--port", type=int, default=0)
ap.add_argument("--peer", action="append", default=[])
ap.add_argument("--tracker", action="append", default=[])
ap.add_argument("--exit-when-done", action="store_true")
ap.add_argument("--expect-complete", action="store_true")
ap.add_argument(
    "--encryption", choices=["plaintext", "enabled", "forced", "forced-rc4"], default="enabled"
)
ap.add_argument("--upload-limit", type=int, default=0)
ap.add_argument("--extension", action="append", default=[])
ap.add_argument("--commands")
ap.add_argument("--transport", choices=["tcp", "utp", "both"], default="tcp")
ap.add_argument("--dht", action="store_true")
ap.add_argument("--dht-node", action="append", default=[])
args = ap.parse_args()
if not (args.torrent or args.magnet or args.dht):
    ap.error("nothing to do: no --torrent, --magnet or --dht")

enc = {
    "plaintext": lt.enc_policy.pe_disabled,
    "enabled": lt.enc_policy.pe_enabled,
    "forced": lt.enc_policy.pe_forced,
    "forced-rc4": lt.enc_policy.pe_forced,
}[args.encryption]

settings = {
    "listen_interfaces": "127.0.0.1:%d" % args.port,
    "outgoing_interfaces": "127.0.0.1",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    # Every peer in a test shares 127.0.0.1; without this libtorrent drops all but one of them.
    "allow_multiple_connections_per_ip": True,
    # A peer dialled before it listens is otherwise retried only after a minute.
    "min_reconnect_time": 1,
    # libtorrent dials uTP first and falls back to TCP only after a ~3.5 s timeout; the other
    # clients here run TCP only (Transmission with utp-enabled false, kp-torrent, aria2).
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    # A finished leecher exits only after its "stopped" announce (default wait 5 s).
    "stop_tracker_timeout": 1,
    "out_enc_policy": enc,
    "in_enc_policy": enc,
    "alert_mask": lt.alert.category_t.error_notification
    | lt.alert.category_t.status_notification
    | lt.alert.category_t.tracker_notification
    | lt.alert.category_t.peer_notification,
    "upload_rate_limit": args.upload_limit,
}
if args.transport != "tcp":
    # uTP on (--transport utp: and TCP off both ways, so every byte goes over uTP).
    settings["enable_outgoing_utp"] = True
    settings["enable_incoming_utp"] = True
if args.transport == "utp":
    settings["enable_outgoing_tcp"] = False
    settings["enable_incoming_tcp"] = False
if args.dht:
    # A DHT on loopback: no public routers, and none of the checks that reject or ban nodes
    # whose address is 127.0.0.1 (all of them here), whose id does not match their IP (BEP 42),
    # or that send many packets from one IP (every node in a test shares it).
    settings.update(
        {
            "enable_dht": True,
            "dht_bootstrap_nodes": "",
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_enforce_node_id": False,
            "dht_prefer_verified_node_ids": False,
            "dht_ignore_dark_internet": False,
            "dht_block_ratelimit": 1000000,
            "dht_upload_rate_limit": 1000000,
            # A torrent added while the table was empty announces again only after this.
            "dht_announce_interval": 5,
        }
    )
    settings["alert_mask"] |= lt.alert.category_t.dht_notification
if args.encryption == "forced-rc4":
    # MSE only, and RC4 for the whole stream (never MSE's plaintext method).
    settings["allowed_enc_level"] = lt.enc_level.rc4
    settings["prefer_rc4"] = True
# Settings at construction (not applied afterwards), or DHT and UPnP start for a moment; flags 0
# leaves out the default plugins, so there is no PEX (ut_pex) either.
ses = lt.session(settings, 0)
for name in args.extension:
    # Plugins by name: ut_metadata (magnet links), ut_pex, smart_ban.
    ses.add_extension(name)
if args.upload_limit:
    # Rate limits skip the local peer class, which holds 127.0.0.0/8: put every address in the
    # global class only, so the limit applies on loopback too.
    everyone = lt.ip_filter()
    everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(everyone)

h = None
info_hash = None
if args.torrent:
    ti = lt.torrent_info(args.torrent)
    atp = lt.add_torrent_params()
    atp.ti = ti
    info_hash = ti.info_hashes().v1
elif args.magnet:
    ti = None
    atp = lt.parse_magnet_uri(args.magnet)
    info_hash = atp.info_hashes.v1
if info_hash is not None:
    atp.save_path = args.save
    h = ses.add_torrent(atp)
if h is not None and args.tracker:
    # Before the first announce, which waits for the file check.
    h.replace_trackers([{"url": u, "tier": 0} for u in args.tracker])


START = time.monotonic()


def out(line):
    sys.stdout.write("%.3f %s\n" % (time.monotonic() - START, line))
    sys.stdout.flush()


if info_hash is not None:
    out("infohash %s" % str(info_hash))


def total_pieces():
    """Pieces in the torrent; 0 while a magnet link has no metadata yet."""
    t = h.torrent_file() if h is not None else None
    return t.num_pieces() if t is not None else 0


def parse_peer(s):
    host, port = s.rsplit(":", 1)
    return (host, int(port))


peers = [parse_peer(p) for p in args.peer]
last_line = None
last_dial = 0.0
last_beat = 0.0
done_printed = False
port_printed = False
own_port = 0
last_peers = None
last_encryption = None
commands_read = 0
dht_contacts = [parse_peer(p) for p in args.dht_node]
last_dht_add = 0.0
last_dht_nodes = None


def read_commands():
    """New complete lines of the commands file (the test appends whole lines)."""
    global commands_read
    if not args.commands:
        return []
    try:
        with open(args.commands, "rb") as f:
            f.seek(commands_read)
            data = f.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    commands_read += end
    return data[:end].decode("utf-8", "replace").splitlines()


while True:
    for cmd in read_commands():
        verb, _, arg = cmd.partition(" ")
        if verb == "connect":
            p = parse_peer(arg)
            peers.append(p)
            if h is None:
                out("error connect needs a torrent")
                sys.exit(2)
            h.connect_peer(p)
            out("command connect %s:%d" % p)
        else:
            out("error unknown command %r" % cmd)
            sys.exit(2)
    for a in ses.pop_alerts():
        if isinstance(a, lt.listen_succeeded_alert):
            if a.socket_type == lt.socket_type_t.tcp and not port_printed:
                out("port %d" % a.port)
                own_port = a.port
                port_printed = True
            elif a.socket_type == lt.socket_type_t.udp and args.dht:
                out("udp-port %d" % a.port)
        elif isinstance(a, lt.listen_failed_alert):
            out("error listen: %s" % a.message())
            sys.exit(2)
        elif isinstance(a, lt.metadata_received_alert):
            out("metadata")
        elif isinstance(a, lt.torrent_checked_alert) and args.expect_complete:
            st = h.status()
            if not st.is_seeding:
                out("error data check found %d of %d pieces" % (st.num_pieces, total_pieces()))
                sys.exit(3)
            out("alert %s: %s" % (a.what(), a.message()))
        else:
            msg = a.message()
            # opentracker lists the announcing peer too, and libtorrent dials it every
            # min_reconnect_time, finds itself and hangs up: keep that out of the log (a real
            # incoming peer still shows in its peer_disconnected line).
            if (
                "connected to ourselves" in msg
                or (own_port and ":%d " % own_port in msg)
                or isinstance(a, lt.incoming_connection_alert)
            ):
                continue
            out("alert %s: %s" % (a.what(), msg))
    now = time.monotonic()
    if args.dht:
        with warnings.catch_warnings():
            # session.status() is deprecated, but the bindings have no other direct count.
            warnings.simplefilter("ignore", DeprecationWarning)
            dht_nodes = ses.status().dht_nodes
        if dht_nodes != last_dht_nodes:
            out("dht %d" % dht_nodes)
            if h is not None and dht_nodes > 0 and not last_dht_nodes:
                # The announce made while the table was empty went nowhere.
                h.force_dht_announce()
            last_dht_nodes = dht_nodes
        if dht_contacts and dht_nodes == 0 and now - last_dht_add > 1.0:
            # A first ping to a node that is not up yet empties the table: add it again.
            for c in dht_contacts:
                ses.add_dht_node(c)
            last_dht_add = now
    if h is None:
        time.sleep(0.1)
        continue
    s = h.status()
    if peers and now - last_dial > 2.0 and s.num_peers < len(peers):
        # connect_peer is a hint that libtorrent may drop after one refusal: repeat it.
        for p in peers:
            h.connect_peer(p)
        last_dial = now
    state = str(s.state).split(".")[-1]
    line = "progress %d %d %s %d" % (s.num_pieces, total_pieces(), state, s.num_peers)
    if line != last_line or now - last_beat > 1.0:
        out(line)
        last_line = line
        last_beat = now
    connected = sorted(
        "%s:%d/%d" % (pi.ip[0], pi.ip[1], int(pi.source))
        for pi in h.get_peer_info()
        if not (pi.flags & lt.peer_info.connecting) and not (pi.flags & lt.peer_info.handshake)
    )
    if connected != last_peers:
        out(" ".join(["peers"] + connected))
        last_peers = connected
    encryption = sorted(
        "%s:%d/%s"
        % (
            pi.ip[0],
            pi.ip[1],
            "rc4"
            if pi.flags & lt.peer_info.rc4_encrypted
            else "plaintext"
            if pi.flags & lt.peer_info.plaintext_encrypted
            else "none",
        )
        for pi in h.get_peer_info()
        if not (pi.flags & lt.peer_info.connecting) and not (pi.flags & lt.peer_info.handshake)
    )
    if encryption != last_encryption:
        out(" ".join(["encryption"] + encryption))
        last_encryption = encryption
    if s.is_seeding and not done_printed:
        out("done")
        done_printed = True
        if args.exit_when_done:
            break
    time.sleep(0.1)

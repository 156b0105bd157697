#!/usr/bin/env python3
"""Records the sock_diag replies the unit tests in ../wire.rs parse.

Run as root: `unshare --net python3 capture.py OUTDIR`. In a fresh network
namespace it sets up one socket per situation the observer classifies,
dumps them with the request the observer sends (AF_INET, then AF_INET6;
INET_DIAG_INFO and INET_DIAG_SKMEMINFO; every state but TIME_WAIT and
NEW_SYN_RECV), saves each reply datagram as-is, and saves `ss -tinoemH`
taken right after as the independent view the tests check against.
"""
import os, socket, struct, subprocess, sys, time

out = sys.argv[1]
sh = lambda cmd: subprocess.run(cmd, shell=True, check=True)
sh("ip link set lo up")
# A tiny receive buffer makes a non-reading peer advertise a zero window at once.
sh("sysctl -qw net.ipv4.tcp_rmem='4096 4096 4096'")

def listener(family, addr):
    l = socket.socket(family, socket.SOCK_STREAM)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(addr)
    l.listen(16)
    return l

def pair(l, family, addr, rcvbuf=None):
    c = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.connect(addr)
    s, _ = l.accept()
    return c, s

L4 = listener(socket.AF_INET, ("127.0.0.1", 5001))
L6 = listener(socket.AF_INET6, ("::1", 5002))
# healthy: data sent and read
c1, s1 = pair(L4, socket.AF_INET, ("127.0.0.1", 5001))
s1.sendall(b"x" * 100); c1.recv(100)
# zero window: the peer never reads
c2, s2 = pair(L4, socket.AF_INET, ("127.0.0.1", 5001), rcvbuf=2048)
s2.setblocking(False)
try:
    while True:
        s2.send(b"z" * 65536)
except BlockingIOError:
    pass
# close wait: the peer closed, we did not
c3, s3 = pair(L4, socket.AF_INET, ("127.0.0.1", 5001))
c3.close()
# dead peer: every segment reaching the peer is dropped (on input, so the
# sender's own transmit succeeds), the RTO backs off
c4, s4 = pair(L4, socket.AF_INET, ("127.0.0.1", 5001))
port4 = c4.getsockname()[1]
sh(f"nft add table inet cap && nft add chain inet cap in '{{ type filter hook input priority 0; }}'"
   f" && nft add rule inet cap in tcp dport {port4} drop")
s4.send(b"d" * 3000)
# IPv6, bytes waiting in the peer's receive queue
c6, s6 = pair(L6, socket.AF_INET6, ("::1", 5002))
s6.sendall(b"v" * 10)
time.sleep(2.5)

STATES = 0xffe & ~(1 << 6)
EXT = (1 << 1) | (1 << 6)  # INET_DIAG_INFO, INET_DIAG_SKMEMINFO
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)  # NETLINK_SOCK_DIAG
for seq, (name, fam) in enumerate([("ipv4", socket.AF_INET), ("ipv6", socket.AF_INET6)], start=1):
    req = struct.pack("=IHHII", 16 + 56, 20, 0x1 | 0x300, seq, 0)
    req += struct.pack("=BBBBI", fam, socket.IPPROTO_TCP, EXT, 0, STATES) + bytes(48)
    nl.send(req)
    n, done = 0, False
    while not done:
        d = nl.recv(65536)
        with open(f"{out}/{name}.{n}.bin", "wb") as f:
            f.write(d)
        n += 1
        off = 0
        while off < len(d):
            ln, typ = struct.unpack_from("=IH", d, off)
            done |= typ in (2, 3)
            off += (ln + 3) & ~3
with open(f"{out}/ss.txt", "w") as f:
    f.write(subprocess.run(["ss", "-tinoemH", "state", "all"], capture_output=True, text=True).stdout)

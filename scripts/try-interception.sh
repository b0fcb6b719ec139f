#!/usr/bin/env bash
# Hands-on tour of interception against a running daemon (start it with `cargo xtask run`).
# Creates a cgroup /sockmesh-demo, intercepts it, runs one connection from inside it to a local
# listener on 127.0.0.2, shows the counters, then removes everything it made.
set -euo pipefail
SOCKMESH=${SOCKMESH:-target/release/sockmesh}
CG=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
[ -n "$CG" ] || { echo "no cgroup2 mount found" >&2; exit 1; }
DEMO="$CG/sockmesh-demo"
cleanup() {
  "$SOCKMESH" intercept disable --cgroup /sockmesh-demo >/dev/null 2>&1 || true
  [ -n "${SRV:-}" ] && kill "$SRV" 2>/dev/null || true
  rmdir "$DEMO" 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$DEMO"
"$SOCKMESH" intercept enable --cgroup /sockmesh-demo
python3 -c 'import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("127.0.0.2",18080));s.listen();c,a=s.accept();c.sendall(b"hello from 127.0.0.2, you came from %r\n" % (a,))' &
SRV=$!
sleep 0.3
sh -c "echo \$\$ > $DEMO/cgroup.procs; exec python3 -c 'import socket;c=socket.create_connection((\"127.0.0.2\",18080));print(\"peer:\",c.getpeername());print(c.recv(200).decode())'"
"$SOCKMESH" intercept status

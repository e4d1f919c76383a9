#!/bin/sh
# Boots a throwaway systemd (PID 1 of new pid/mount/uts/ipc/cgroup/net
# namespaces) on an overlay of / whose writes land in a tmpfs, installs the
# visutility .deb in it and checks the units for real: Type=notify readiness,
# socket activation, sandbox, reload, watchdog, clean stop, restart on
# connection, upgrade, remove, purge.
#
#   usage: boot-test.sh path/to/visutility_*.deb     (about 45 s)
#   needs: root, unshare, nsenter, overlayfs, cgroup2, python3
#
# Nothing reaches the host: files are written only to the overlay (tmpfs),
# /sys and /proc/sys are read-only, the network namespace is empty, and
# sysinit units with host-wide effects (udev, sysctl, binfmt, modules, time)
# are masked. The container is killed on exit, whatever happens.
set -eu

DEB=$(readlink -f "$1")
[ -f "$DEB" ] || { echo "no .deb at $1" >&2; exit 2; }
WORK=$(mktemp -d /var/tmp/visutility-boot.XXXXXX)
LOG="$WORK/boot.log"

cat >"$WORK/init.sh" <<'EOF'
#!/bin/sh
set -eu
B=$1
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$B"
mkdir "$B/upper" "$B/work" "$B/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$B/root"
R="$B/root"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mkdir -p "$R/run/systemd/system" "$R/oldroot"
printf '[Unit]\nDescription=boot test target\nAllowIsolate=yes\n' >"$R/run/systemd/system/boottest.target"
for u in systemd-udev-trigger.service systemd-udevd.service systemd-sysctl.service \
         systemd-binfmt.service systemd-modules-load.service systemd-timesyncd.service \
         systemd-random-seed.service proc-sys-fs-binfmt_misc.automount \
         getty@tty1.service console-getty.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$u"
done
# Debian container images forbid service starts in maintainer scripts.
rm -f "$R/usr/sbin/policy-rc.d"
# The deb, visible inside.
cp "$B/../pkg.deb" "$R/pkg.deb"
cd "$R"
pivot_root . oldroot        # not chroot: PrivateUsers= needs user namespaces
umount -l /oldroot
exec /usr/bin/env -i container=boottest PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=boottest.target --log-target=journal --show-status=no
EOF
chmod +x "$WORK/init.sh"
mkdir "$WORK/ovl"
cp "$DEB" "$WORK/pkg.deb"

unshare --pid --fork --mount --uts --ipc --cgroup --net "$WORK/init.sh" "$WORK/ovl" \
    >"$LOG" 2>&1 </dev/null &
UNSHARE=$!
PID=
cleanup() {
    if [ -n "$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
    kill -KILL "$UNSHARE" 2>/dev/null || true
    wait "$UNSHARE" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The namespace's PID 1 is unshare's only child.
for _ in $(seq 50); do
    PID=$(pgrep -P "$UNSHARE" -x systemd || true)
    [ -n "$PID" ] && break
    sleep 0.2
done
[ -n "$PID" ] || { echo "systemd did not start:"; cat "$LOG"; exit 1; }
ct() { nsenter -t "$PID" -m -u -i -n -p -C -r -w "$@"; }
for _ in $(seq 100); do
    state=$(ct systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 0.3
done
echo "container systemd: ${state:-no answer}"

FAILS=0
PASSES=0
ok()   { echo "ok   - $*"; PASSES=$((PASSES + 1)); }
bad()  { echo "FAIL - $*"; FAILS=$((FAILS + 1)); }
check() { desc=$1; shift; if "$@" >/dev/null 2>&1; then ok "$desc"; else bad "$desc"; fi; }
active() { [ "$(ct systemctl is-active "$1")" = active ]; }
prop() { ct systemctl show -p "$2" --value "$1"; }
absent() { ! ct test -e "$1"; }

socket_perms() { [ "$(ct stat -c '%A %U:%G' /run/visutility-ingest.sock)" = "srw-rw---- visutility:visutility" ]; }
state_perms() { [ "$(ct stat -c '%a %U' /var/lib/visutility)" = "750 visutility" ]; }
runs_as_user() { [ "$(ct ps -o user= -p "$(prop visutility.service MainPID)")" = visutility ]; }
holds_socket() { ct ss -xlp | grep /run/visutility-ingest.sock | grep -q '"visutility"'; }
push_one() {
    printf '%s\n' '{"model_id":"boot-test","drift_score":0.1,"accuracy":0.95,"error":0}' |
        ct visutility push -
}
lists_model() { ct visutility models --json | grep -q boot-test; }
# Two groups, two roles: an operator (visutility-admin) may use the control
# socket; a model server (visutility) may push and nothing else.
config_perms() { [ "$(ct stat -c '%a %U:%G' /etc/visutility/config.toml)" = "640 root:visutility-admin" ]; }
control_perms() {
    [ "$(ct stat -c '%A %U:%G' /run/visutility/control.sock)" = "srw-rw---- visutility:visutility-admin" ] &&
        [ "$(ct stat -c '%a %G' /run/visutility)" = "750 visutility-admin" ]
}
as_admin() { ct runuser -u vt-admin -- visutility --config /etc/visutility/config.toml "$@"; }
admin_operates() { as_admin status && as_admin pause boot-test && as_admin resume boot-test; }
pusher_pushes() {
    printf '%s\n' '{"model_id":"boot-test","drift_score":0.1,"accuracy":0.95,"error":0}' |
        ct runuser -u vt-pusher -- visutility push --socket /run/visutility-ingest.sock -
}
pusher_cannot_operate() {
    ! ct runuser -u vt-pusher -- test -r /etc/visutility/config.toml &&
        ! ct runuser -u vt-pusher -- python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect("/run/visutility/control.sock")'
}
no_watchdog_kill() {
    [ "$(prop visutility.service NRestarts)" = 0 ] &&
        ! ct journalctl -u visutility.service -o cat | grep -qi 'watchdog timeout'
}
clean_exit() { [ "$(prop visutility.service ExecMainStatus)" = 0 ]; }
result_success() { [ "$(prop visutility.service Result)" = success ]; }
restarted() { [ "$(prop visutility.service MainPID)" != "$P1" ] && active visutility.service; }
stopped() { ! ct systemctl is-active -q visutility.service; }
no_errors() { ! ct journalctl -u visutility.service -o cat | grep -q ERROR; }

ct dpkg -i /pkg.deb >/dev/null
check "dpkg -i starts visutility.socket" active visutility.socket
check "dpkg -i starts visutility.service (Type=notify READY=1)" active visutility.service
check "ingest socket is srw-rw---- visutility:visutility" socket_perms
check "state dir owned by visutility, 0750" state_perms
check "main process runs as visutility" runs_as_user
check "the daemon holds systemd's listening socket (socket activation)" holds_socket
# The CLI as an operator uses it (root: /etc/visutility/config.toml gives the sockets).
check "visutility push through the activated socket" push_one
check "visutility status over the control socket" ct visutility status
check "visutility models --json lists the pushed model" lists_model
check "groups visutility and visutility-admin exist" ct getent group visutility visutility-admin
check "config is 0640 root:visutility-admin" config_perms
check "control socket is srw-rw---- visutility:visutility-admin in a 0750 dir" control_perms
ct useradd --system --no-create-home --groups visutility-admin vt-admin
ct useradd --system --no-create-home --groups visutility vt-pusher
check "a member of visutility-admin operates (status, pause, resume)" admin_operates
check "a member of visutility pushes through the ingest socket" pusher_pushes
check "a member of visutility neither reads the config nor reaches the control socket" pusher_cannot_operate
check "systemctl reload (check-config, then SIGHUP)" ct systemctl reload visutility.service
check "still active after reload" active visutility.service
echo "waiting 35 s: WatchdogSec=30 must not fire"
sleep 35
check "watchdog pinged, no watchdog kill" no_watchdog_kill
ct systemctl stop visutility.service
check "clean stop: exit status 0" clean_exit
check "clean stop: result success" result_success
check "socket still listening after service stop" active visutility.socket
ct python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("/run/visutility-ingest.sock"); s.sendall(b"{\"op\":\"flush\"}\n"); s.settimeout(10); print(s.recv(4096))' || true
sleep 1
check "a connection starts the service again (socket activation)" active visutility.service
P1=$(prop visutility.service MainPID)
ct dpkg -i /pkg.deb >/dev/null
check "reinstall/upgrade restarts the service" restarted
ct dpkg -r visutility >/dev/null
check "dpkg -r stops the service" stopped
check "dpkg -r removes the socket" absent /run/visutility-ingest.sock
check "dpkg -r keeps state" ct test -d /var/lib/visutility
ct dpkg --purge visutility >/dev/null
check "dpkg --purge removes state" absent /var/lib/visutility
check "dpkg --purge removes config" absent /etc/visutility/config.toml
check "no ERROR in the daemon's log" no_errors

echo "--- warnings in the daemon's log (information)"
ct journalctl -u visutility.service -o cat | grep -E "WARN" | sort | uniq -c | head -20 || true
if [ "$FAILS" -ne 0 ]; then
    echo "--- journal of visutility.service"
    ct journalctl -u visutility.service -u visutility.socket --no-pager -n 80 || true
fi
echo "boot-test: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]

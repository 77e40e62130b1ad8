#!/bin/sh
# The test run of the systemd node (`cargo xtask vm-test --layout systemd`),
# started by apptheus-vmtest.service once multi-user.target is reached:
# installs the agent's Debian package as a site would (its postinst enables
# and starts apptheus.service), runs the test binaries of /opt/vmtest/plan
# with their ignored tests (they need this node) one at a time, and powers
# off. Lines for the host start with "@@vm@@", as in the busybox cells.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 RUST_BACKTRACE=1
# A test that would have to skip fails instead.
export APPTHEUS_REQUIRE_PRIVILEGED=1
# What the tests take from the run's archive.
export APPTHEUS_TEST_WORKLOAD=/opt/vmtest/workload
export APPTHEUS_NODE_DEB=/opt/vmtest/apptheus.deb
# Measurements the tests note for the report (apptheus-testkit's node::note).
export APPTHEUS_NODE_NOTES=/run/apptheus-vmtest-notes
cd /root || exit 1

mark() { echo "@@vm@@ $*"; }
finish() {
	sync
	mark done
	systemctl poweroff --force --force
	sleep 60
}

# How much longer than natively the tests may wait: given, or measured
# here against the host's time for the same calibration work.
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	apptheus.time_scale=*) export APPTHEUS_TEST_TIME_SCALE=${arg#apptheus.time_scale=} ;;
	apptheus.calibration=*) calibration=${arg#apptheus.calibration=} ;;
	esac
done
if [ -z "${APPTHEUS_TEST_TIME_SCALE:-}" ] && [ -n "${calibration:-}" ]; then
	APPTHEUS_TEST_TIME_SCALE=$(/opt/vmtest/calibrate calibrate "$calibration") || APPTHEUS_TEST_TIME_SCALE=10
	export APPTHEUS_TEST_TIME_SCALE
fi

mark "env release=$(uname -r) layout=systemd"
mark "note time-scale=${APPTHEUS_TEST_TIME_SCALE:-1}"
echo "--- node: $(systemctl is-system-running) after $(cut -d' ' -f1 /proc/uptime) s; $(systemctl --version | head -n 1)"
dpkg-query -W -f '${Package} ${Version}\n' apptainer slurmd munge systemd
echo "--- cgroup mounts"
grep cgroup /proc/self/mountinfo
echo "--- root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "--- /proc/self/cgroup: $(cat /proc/self/cgroup)"
failed=$(systemctl --failed --no-legend --plain | awk '{ print $1 }' | tr '\n' ' ')
[ -z "$failed" ] || mark "note failed-units=$failed"
for m in loop overlay squashfs; do
	grep -q "^$m " /proc/modules || [ -d "/sys/module/$m" ] || mark "note module-not-loaded=$m"
done

mark "begin test=install"
start=$(date +%s)
dpkg -i "$APPTHEUS_NODE_DEB" 2>&1
rc=$?
systemctl --no-pager status apptheus 2>&1 | head -n 12
mark "end test=install exit=$rc seconds=$(($(date +%s) - start))"
[ "$rc" -eq 0 ] || mark "error installing $APPTHEUS_NODE_DEB failed"

eval "set -- $(cat /opt/vmtest/args)"
while read -r name path; do
	mark "begin test=$name"
	start=$(date +%s)
	# The console is a terminal: no colours, or the host could not read
	# the results.
	"$path" --ignored --test-threads=1 --color never "$@" </dev/null 2>&1
	rc=$?
	mark "end test=$name exit=$rc seconds=$(($(date +%s) - start))"
done </opt/vmtest/plan

while read -r line; do mark "note $line"; done <"$APPTHEUS_NODE_NOTES" 2>/dev/null
echo "--- the agent's journal (tail)"
journalctl -u apptheus --no-pager -o short-monotonic | tail -n 60
echo "--- failed units"
systemctl --failed --no-legend --plain
finish

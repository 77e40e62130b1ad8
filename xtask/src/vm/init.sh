#!/opt/busybox/bin/sh
# PID 1 of the VMs of `cargo xtask vm-test`. Mounts what a host has, then
# the cgroup layout named on the kernel command line (apptheus.layout=v1,
# hybrid or v2) the way systemd mounts it, enters a "session" cgroup as a
# login shell or a batch job would, runs the test binaries listed in
# /vmtest/plan, and powers off. Lines for the host start with "@@vm@@".
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/busybox/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8 RUST_BACKTRACE=1
# A privileged test that would have to skip fails instead.
export APPTHEUS_REQUIRE_PRIVILEGED=1

mark() { echo "@@vm@@ $*"; }
finish() {
	sync
	mark done
	poweroff -f
	sleep 10
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# /tmp stays the initramfs' own directory (mode 1777): a tmpfs mounted
# there would hide test binaries of a workspace under /tmp.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mount -t bpf -o mode=700 bpf /sys/fs/bpf
ip link set lo up
# An address that is not 127.0.0.1: getaddrinfo() with AI_ADDRCONFIG (as
# Slurm's daemons call it) finds no IPv4 address on a host that has none.
ip addr add 10.0.2.15/32 dev lo
hostname apptheus-vm 2>/dev/null

layout=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	apptheus.layout=*) layout=${arg#apptheus.layout=} ;;
	# How much longer than natively the tests may wait (apptheus-testkit's
	# host::time_scale): given, or measured here against the host's time
	# for the same calibration work.
	apptheus.time_scale=*) export APPTHEUS_TEST_TIME_SCALE=${arg#apptheus.time_scale=} ;;
	apptheus.calibration=*) calibration=${arg#apptheus.calibration=} ;;
	esac
done
if [ -z "${APPTHEUS_TEST_TIME_SCALE:-}" ] && [ -n "${calibration:-}" ]; then
	APPTHEUS_TEST_TIME_SCALE=$(/vmtest/calibrate calibrate "$calibration") || APPTHEUS_TEST_TIME_SCALE=10
	export APPTHEUS_TEST_TIME_SCALE
fi
mark "note time-scale=${APPTHEUS_TEST_TIME_SCALE:-1}"
# As on a CI runner: the socket tests hold over a thousand connections.
ulimit -n 65536

# Enables every controller the cgroup2 directory $1 may hand to children.
enable_all() {
	for c in $(cat "$1/cgroup.controllers"); do
		echo "+$c" >"$1/cgroup.subtree_control" || mark "note cannot-enable=$c in $1"
	done
}

# Every v1 controller the kernel has, each in its own hierarchy (cpu and
# cpuacct, net_cls and net_prio together), plus systemd's named one.
mount_v1() {
	mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs /sys/fs/cgroup
	mkdir /sys/fs/cgroup/systemd
	mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
	done_list=" "
	for c in $(awk 'NR > 1 && $4 == 1 { print $1 }' /proc/cgroups); do
		case "$c" in
		cpu | cpuacct) h=cpu,cpuacct ;;
		net_cls | net_prio) h=net_cls,net_prio ;;
		*) h=$c ;;
		esac
		case "$done_list" in *" $h "*) continue ;; esac
		done_list="$done_list$h "
		mkdir -p "/sys/fs/cgroup/$h"
		if mount -t cgroup -o "$h" cgroup "/sys/fs/cgroup/$h" 2>/dev/null; then
			case "$h" in
			*,*) for part in $(echo "$h" | tr , ' '); do ln -s "$h" "/sys/fs/cgroup/$part"; done ;;
			esac
		else
			rmdir "/sys/fs/cgroup/$h"
			mark "note no-v1-hierarchy=$h"
		fi
	done
}

# Hierarchical memory accounting on v1 (the only mode from Linux 5.11 on):
# systemd and Slurm switch it on at the root, and without it a child
# cgroup is not bound by its parent's limit.
use_hierarchy() {
	f=/sys/fs/cgroup/memory/memory.use_hierarchy
	[ -f "$f" ] && echo 1 >"$f"
}

case "$layout" in
v1)
	mount_v1
	use_hierarchy
	;;
hybrid)
	mount_v1
	use_hierarchy
	mkdir /sys/fs/cgroup/unified
	mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup/unified
	;;
v2)
	mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
	enable_all /sys/fs/cgroup
	# systemd's slice for services, where Slurm's cgroup/v2 plugin puts
	# its slurmstepd scope (and the jobs' cgroups below it).
	mkdir /sys/fs/cgroup/system.slice
	enable_all /sys/fs/cgroup/system.slice
	;;
*)
	mark "error unknown layout '$layout' (apptheus.layout=v1|hybrid|v2)"
	finish
	;;
esac

# Like a systemd session scope (or a batch job's step): a leaf cgroup in
# every hierarchy; on cgroup2 its parent hands it every controller.
for m in $(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts); do
	# v1 cpuset: new cgroups copy their parent's CPUs and memory nodes.
	[ -f "$m/cgroup.clone_children" ] && echo 1 >"$m/cgroup.clone_children"
	mkdir -p "$m/vmtest.slice/session.scope"
	[ -f "$m/cgroup.controllers" ] && enable_all "$m/vmtest.slice"
	echo $$ >"$m/vmtest.slice/session.scope/cgroup.procs" || mark "error cannot enter $m/vmtest.slice/session.scope"
done

[ -e /sys/kernel/btf/vmlinux ] || mark "note no-btf"
mark "env release=$(uname -r) layout=$layout"
echo "--- /proc/self/cgroup"
cat /proc/self/cgroup
echo "--- cgroup mounts"
grep cgroup /proc/self/mountinfo
echo "--- /proc/cgroups"
cat /proc/cgroups
[ -f /sys/fs/cgroup/cgroup.subtree_control ] && echo "--- root subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

cd /root || finish
eval "set -- $(cat /vmtest/args)"
while read -r name path; do
	mark "begin test=$name"
	start=$(date +%s)
	"$path" "$@" </dev/null 2>&1
	rc=$?
	mark "end test=$name exit=$rc seconds=$(($(date +%s) - start))"
	left=$(find /sys/fs/cgroup -type d -name 'apptheus-*' 2>/dev/null)
	if [ -n "$left" ]; then
		echo "--- cgroups left behind by $name:"
		echo "$left"
		echo "--- processes:"
		ps -o pid,ppid,args
	fi
done </vmtest/plan

echo "--- dmesg (tail)"
dmesg | tail -n 80
finish

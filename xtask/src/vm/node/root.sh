#!/usr/bin/env bash
# The recipe of the systemd node's root (`cargo xtask vm-test --layout
# systemd`): Debian's unstable suite as a compute node runs it, built with
# debootstrap into DIR and configured offline. xtask packs DIR into the
# cached initramfs afterwards; what changes with every build (the agent's
# .deb, the test binary) is not in here but in a second archive per run.
#
#   root.sh DIR MIRROR MODULES RELEASE
#
# MODULES holds the kernel's lib/modules/RELEASE (from the same kernel
# package the VM boots). Changing this file changes the recipe stamp:
# cached roots are then built again.
set -euo pipefail
dir=$1 mirror=$2 modules=$3 release=$4

# systemd as PID 1 with logind, D-Bus and users' session buses; Apptainer
# with its shipped apptainer.conf (systemd cgroups = yes); Slurm with munge;
# kmod for the kernel's modules (loop, overlay, squashfs); su and setpriv
# (util-linux); busybox for the test images; iproute2 for the node's address.
include=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd
include+=,apptainer,squashfs-tools,busybox-static,procps,kmod,iproute2
include+=,slurmd,slurmctld,slurm-client,munge

debootstrap --variant=minbase --include="$include" sid "$dir" "$mirror"

# Whatever debootstrap left mounted (proc, sys) must go before packing.
findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | sort -r |
	while read -r m; do umount -l "$m" || true; done

in_root() { chroot "$dir" "$@"; }

# --- the machine ------------------------------------------------------------
echo apptheus-node >"$dir/etc/hostname"
# Slurm's daemons look their node up, and getaddrinfo() with AI_ADDRCONFIG
# (as they call it) wants an address that is not loopback: the node's.
cat >"$dir/etc/hosts" <<'HOSTS'
127.0.0.1	localhost
10.0.2.15	apptheus-node
::1	localhost ip6-localhost ip6-loopback
HOSTS
# Apptainer refuses to start without one; there is no network to resolve.
: >"$dir/etc/resolv.conf"
: >"$dir/etc/fstab"
rm -f "$dir/etc/machine-id"
in_root systemd-machine-id-setup >/dev/null

cat >"$dir/etc/systemd/system/node-address.service" <<'UNIT'
[Unit]
Description=The node's own address (10.0.2.15 on lo), which Slurm resolves
DefaultDependencies=no
After=systemd-sysctl.service
Before=network-pre.target munge.service slurmctld.service slurmd.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip link set lo up
ExecStart=/usr/sbin/ip addr add 10.0.2.15/32 dev lo

[Install]
WantedBy=sysinit.target
UNIT
in_root systemctl enable node-address.service

# No console login, no timers of maintenance: nothing but the node's
# services competes with the tests for the emulated CPUs.
in_root systemctl mask serial-getty@ttyS0.service getty@tty1.service \
	apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
	e2scrub_all.timer fstrim.timer man-db.timer systemd-tmpfiles-clean.timer \
	2>/dev/null || true

# --- the kernel's modules -------------------------------------------------
mkdir -p "$dir/usr/lib/modules"
cp -a "$modules/$release" "$dir/usr/lib/modules/"
in_root depmod "$release"
# Loaded at boot (this systemd has no systemd-modules-load.service): root
# mounts SIF images through loop and squashfs, and overlays them.
cat >"$dir/etc/systemd/system/node-modules.service" <<'UNIT'
[Unit]
Description=Kernel modules Apptainer needs (loop, overlay, squashfs)
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/modprobe -a loop overlay squashfs

[Install]
WantedBy=sysinit.target
UNIT
in_root systemctl enable node-modules.service

# --- an ordinary user with a lingering systemd user manager ---------------
in_root useradd --create-home --uid 1500 --user-group --shell /bin/sh apptheus-test
mkdir -p "$dir/var/lib/systemd/linger"
: >"$dir/var/lib/systemd/linger/apptheus-test"

# --- Slurm, one node, cgroup/v2 under systemd -------------------------------
mkdir -p "$dir/etc/slurm"
cat >"$dir/etc/slurm/slurm.conf" <<'CONF'
ClusterName=apptheus
SlurmctldHost=apptheus-node
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
SlurmdTimeout=600
InactiveLimit=0
KillWait=5
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=apptheus-node CPUs=2 RealMemory=3000 State=UNKNOWN
PartitionName=apptheus Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$dir/etc/slurm/cgroup.conf" <<'CONF'
CgroupPlugin=cgroup/v2
ConstrainRAMSpace=yes
ConstrainCores=yes
CONF
mkdir -p "$dir/var/lib/slurm/slurmctld" "$dir/var/lib/slurm/slurmd" "$dir/var/log/slurm"
in_root chown -R slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
in_root systemctl enable munge.service slurmctld.service slurmd.service
if [ ! -s "$dir/etc/munge/munge.key" ]; then
	dd if=/dev/urandom of="$dir/etc/munge/munge.key" bs=128 count=1 status=none
fi
in_root chown munge:munge /etc/munge/munge.key
chmod 0400 "$dir/etc/munge/munge.key"

# --- smaller: what nobody reads in a VM ----------------------------------
rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
	"$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C*' -exec rm -rf {} +

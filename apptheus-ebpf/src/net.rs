//! cgroup_skb ingress and egress (network collector), attached once to the
//! cgroup2 root: bytes and packets of the sockets of each container's
//! cgroup. The socket's cgroup2 id (the inode of its cgroup directory) is
//! mapped to the container by user space when it places the container.
//! Both programs always return 1: they count, never filter.
use aya_ebpf::{
    EbpfContext as _, bindings::__sk_buff, helpers::bpf_skb_cgroup_id, macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{
    kernel::atomic_add,
    maps::{CGROUPS, CONTAINERS},
};

/// Verdict of a cgroup_skb program that lets the packet through.
const ALLOW: i32 = 1;

#[cgroup_skb(ingress)]
pub fn apptheus_netin(ctx: SkBuffContext) -> i32 {
    try_count(&ctx, false);
    ALLOW
}

#[cgroup_skb(egress)]
pub fn apptheus_netout(ctx: SkBuffContext) -> i32 {
    try_count(&ctx, true);
    ALLOW
}

fn try_count(ctx: &SkBuffContext, transmit: bool) {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: skb is the context the kernel handed this program.
    let cgid = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: the value is copied out at once.
    let Some(cid) = (unsafe { CGROUPS.get(&cgid) }).copied() else {
        return;
    };
    let Some(st) = CONTAINERS.get_ptr_mut(&cid) else {
        return;
    };
    let bytes = u64::from(ctx.len());
    // A TSO/GSO super-packet is one skb but several packets on the wire.
    // SAFETY: a read of the program's context, which the verifier checks.
    let segs = u64::from(unsafe { (*skb).gso_segs }).max(1);
    // SAFETY: st points into a live map value.
    unsafe {
        if transmit {
            atomic_add(&raw mut (*st).net_tx_bytes, bytes);
            atomic_add(&raw mut (*st).net_tx_packets, segs);
        } else {
            atomic_add(&raw mut (*st).net_rx_bytes, bytes);
            atomic_add(&raw mut (*st).net_rx_packets, segs);
        }
    }
}

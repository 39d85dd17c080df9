//! Every program and map of the eBPF object, by name: the one list user space uses. The kernel
//! side names its functions and statics the same (aya's macros take identifiers, not
//! constants); a test in profiler/src/probes checks the object against these lists both ways.

/// Programs, by subject (the file of profiler-ebpf/src that holds them).
pub mod program {
    // net.rs
    pub const NET_QUEUE: &str = "net_queue";
    pub const NET_XMIT: &str = "net_xmit";
    pub const NET_RX: &str = "net_rx";
    pub const NET_RECV: &str = "net_recv";
    pub const NET_GRO: &str = "net_gro";
    pub const NET_DELIVER: &str = "net_deliver";
    pub const NET_DROP: &str = "net_drop";
    pub const NET_CONSUME: &str = "net_consume";
    pub const NET_FLOOR: &str = "net_floor";
    pub const NET_READY: &str = "net_ready";
    pub const NET_WAKING: &str = "net_waking";
    pub const NET_WAKEUP: &str = "net_wakeup";
    pub const NET_SWITCH: &str = "net_switch";
    pub const NET_RECV_RET: &str = "net_recv_ret";
    pub const NET_SEND_RET: &str = "net_send_ret";
    pub const NET_SEND: &str = "net_send";
    /// Function probes (fentry where the kernel allows, kprobe otherwise; see attach::plan).
    pub const NET_F_LOCAL_OUT: &str = "net_f_local_out";
    pub const NET_K_LOCAL_OUT: &str = "net_k_local_out";
    pub const NET_K_CONNTRACK: &str = "net_k_conntrack";
    pub const NET_KR_CONNTRACK: &str = "net_kr_conntrack";
    pub const NET_K_NAT: &str = "net_k_nat";
    pub const NET_KR_NAT: &str = "net_kr_nat";
    pub const NET_F_FORWARD: &str = "net_f_forward";
    pub const NET_K_FORWARD: &str = "net_k_forward";
    pub const NET_K_VXLAN_XMIT: &str = "net_k_vxlan_xmit";
    pub const NET_K_GENEVE_XMIT: &str = "net_k_geneve_xmit";
    pub const NET_K_IPIP_XMIT: &str = "net_k_ipip_xmit";
    pub const NET_K_GRE_XMIT: &str = "net_k_gre_xmit";
    pub const NET_FX_ROUTE_CACHE: &str = "net_fx_route_cache";
    pub const NET_KR_ROUTE_CACHE: &str = "net_kr_route_cache";
    pub const NET_FX_ROUTE_OUTPUT: &str = "net_fx_route_output";
    pub const NET_KR_ROUTE_OUTPUT: &str = "net_kr_route_output";
    // softirq.rs
    pub const SOFTIRQ_RAISE: &str = "softirq_raise";
    pub const SOFTIRQ_ENTRY: &str = "softirq_entry";
    pub const SOFTIRQ_EXIT: &str = "softirq_exit";
    pub const SOFTIRQ_NAPI_POLL: &str = "softirq_napi_poll";
    // kvm.rs
    pub const KVM_SYS_ENTER: &str = "kvm_sys_enter";
    pub const KVM_SYS_EXIT: &str = "kvm_sys_exit";
    pub const KVM_EXIT: &str = "kvm_tp_exit";
    pub const KVM_ENTRY: &str = "kvm_tp_entry";
    pub const KVM_USERSPACE_EXIT: &str = "kvm_tp_userspace_exit";
    pub const KVM_PIO: &str = "kvm_tp_pio";
    pub const KVM_MMIO: &str = "kvm_tp_mmio";
    pub const KVM_MSR: &str = "kvm_tp_msr";
    pub const KVM_EMULATE_INSN: &str = "kvm_tp_emulate_insn";
    pub const KVM_CPUID: &str = "kvm_tp_cpuid";
    pub const KVM_HYPERCALL: &str = "kvm_tp_hypercall";
    // exec.rs
    pub const EXEC: &str = "exec_event";
    pub const RENAME: &str = "rename_event";
    // sched.rs
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    pub const SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    pub const SCHED_SWITCH: &str = "sched_switch";
    // migrate.rs
    pub const MIGRATE_SEND: &str = "migrate_send";
    pub const MIGRATE_RECV: &str = "migrate_recv";
    pub const MIGRATE_SWITCH: &str = "migrate_switch";
    // inject.rs
    pub const INJECT: &str = "inject_delay";
    // selftest.rs
    pub const SELFTEST: &str = "selftest_hist";
    // probe.rs: the doctor's one program per mechanism.
    pub const DOCTOR_KPROBE: &str = "doctor_kprobe";
    pub const DOCTOR_KRETPROBE: &str = "doctor_kretprobe";
    pub const DOCTOR_FENTRY: &str = "doctor_fentry";
    pub const DOCTOR_FEXIT: &str = "doctor_fexit";
    pub const DOCTOR_TP_BTF: &str = "doctor_tp_btf";
    pub const DOCTOR_RAW_TP: &str = "doctor_raw_tp";
    pub const DOCTOR_TRACEPOINT: &str = "doctor_tracepoint";
    pub const DOCTOR_KVM_EXIT: &str = "doctor_kvm_exit";
    pub const DOCTOR_TC: &str = "doctor_tc";
    pub const DOCTOR_XDP: &str = "doctor_xdp";

    pub const ALL: &[&str] = &[
        NET_QUEUE,
        NET_XMIT,
        NET_RX,
        NET_RECV,
        NET_GRO,
        NET_DELIVER,
        NET_DROP,
        NET_CONSUME,
        NET_FLOOR,
        NET_READY,
        NET_WAKING,
        NET_WAKEUP,
        NET_SWITCH,
        NET_RECV_RET,
        NET_SEND_RET,
        NET_SEND,
        NET_F_LOCAL_OUT,
        NET_K_LOCAL_OUT,
        NET_K_CONNTRACK,
        NET_KR_CONNTRACK,
        NET_K_NAT,
        NET_KR_NAT,
        NET_F_FORWARD,
        NET_K_FORWARD,
        NET_K_VXLAN_XMIT,
        NET_K_GENEVE_XMIT,
        NET_K_IPIP_XMIT,
        NET_K_GRE_XMIT,
        NET_FX_ROUTE_CACHE,
        NET_KR_ROUTE_CACHE,
        NET_FX_ROUTE_OUTPUT,
        NET_KR_ROUTE_OUTPUT,
        SOFTIRQ_RAISE,
        SOFTIRQ_ENTRY,
        SOFTIRQ_EXIT,
        SOFTIRQ_NAPI_POLL,
        KVM_SYS_ENTER,
        KVM_SYS_EXIT,
        KVM_EXIT,
        KVM_ENTRY,
        KVM_USERSPACE_EXIT,
        KVM_PIO,
        KVM_MMIO,
        KVM_MSR,
        KVM_EMULATE_INSN,
        KVM_CPUID,
        KVM_HYPERCALL,
        EXEC,
        RENAME,
        SCHED_WAKEUP,
        SCHED_WAKEUP_NEW,
        SCHED_SWITCH,
        MIGRATE_SEND,
        MIGRATE_RECV,
        MIGRATE_SWITCH,
        INJECT,
        SELFTEST,
        DOCTOR_KPROBE,
        DOCTOR_KRETPROBE,
        DOCTOR_FENTRY,
        DOCTOR_FEXIT,
        DOCTOR_TP_BTF,
        DOCTOR_RAW_TP,
        DOCTOR_TRACEPOINT,
        DOCTOR_KVM_EXIT,
        DOCTOR_TC,
        DOCTOR_XDP,
    ];
}

/// Maps, and the loader-set globals (`Global<T>` statics, found by symbol, not as maps).
pub mod map {
    pub const NET_CONFIG: &str = "NET_CONFIG";
    pub const NET_SKB: &str = "NET_SKB";
    pub const NET_CONTROL: &str = "NET_CONTROL";
    pub const NET_DEV: &str = "NET_DEV";
    pub const SEG_SLOT: &str = "SEG_SLOT";
    pub const NET_HIST: &str = "NET_HIST";
    pub const NET_POS: &str = "NET_POS";
    pub const NET_COUNTERS: &str = "NET_COUNTERS";
    pub const NET_DROPS: &str = "NET_DROPS";
    pub const NET_UNKNOWN: &str = "NET_UNKNOWN";
    pub const NET_EVENTS: &str = "NET_EVENTS";
    pub const NET_TASK: &str = "NET_TASK";
    pub const NET_CPU: &str = "NET_CPU";
    pub const NET_APPS: &str = "NET_APPS";
    pub const NET_FUNC: &str = "NET_FUNC";
    pub const SOFTIRQ_STATE: &str = "SOFTIRQ_STATE";
    pub const SOFTIRQ_HIST: &str = "SOFTIRQ_HIST";
    pub const KVM_CONFIG: &str = "KVM_CONFIG";
    pub const KVM_THREADS: &str = "KVM_THREADS";
    pub const KVM_EXIT_SLOT: &str = "KVM_EXIT_SLOT";
    pub const KVM_EXIT_HIST: &str = "KVM_EXIT_HIST";
    pub const KVM_EXIT_COUNT: &str = "KVM_EXIT_COUNT";
    pub const KVM_RUN_HIST: &str = "KVM_RUN_HIST";
    pub const KVM_USER_EXITS: &str = "KVM_USER_EXITS";
    pub const KVM_COUNTERS: &str = "KVM_COUNTERS";
    pub const KVM_PIO_PORTS: &str = "KVM_PIO_PORTS";
    pub const EXEC_EVENTS: &str = "EXEC_EVENTS";
    pub const SCHED_CONFIG: &str = "SCHED_CONFIG";
    pub const SCHED_TGIDS: &str = "SCHED_TGIDS";
    pub const SCHED_READY: &str = "SCHED_READY";
    pub const SCHED_HIST: &str = "SCHED_HIST";
    pub const MIGRATE_CONFIG: &str = "MIGRATE_CONFIG";
    pub const MIGRATE_BYTES: &str = "MIGRATE_BYTES";
    pub const MIGRATE_COUNTERS: &str = "MIGRATE_COUNTERS";
    pub const MIGRATE_VCPUS: &str = "MIGRATE_VCPUS";
    pub const MIGRATE_ARM: &str = "MIGRATE_ARM";
    pub const INJECT_CONFIG: &str = "INJECT_CONFIG";
    pub const INJECT_COUNT: &str = "INJECT_COUNT";
    pub const SELFTEST_HIST: &str = "SELFTEST_HIST";
    pub const PROBE_HITS: &str = "PROBE_HITS";
    /// aya-log-ebpf's ring buffer (`--debug-bpf`), named by that crate.
    pub const AYA_LOGS: &str = "AYA_LOGS";

    pub const ALL: &[&str] = &[
        NET_SKB,
        NET_CONTROL,
        NET_DEV,
        SEG_SLOT,
        NET_HIST,
        NET_POS,
        NET_COUNTERS,
        NET_DROPS,
        NET_UNKNOWN,
        NET_EVENTS,
        NET_TASK,
        NET_CPU,
        NET_APPS,
        NET_FUNC,
        SOFTIRQ_STATE,
        SOFTIRQ_HIST,
        KVM_THREADS,
        KVM_EXIT_SLOT,
        KVM_EXIT_HIST,
        KVM_EXIT_COUNT,
        KVM_RUN_HIST,
        KVM_USER_EXITS,
        KVM_COUNTERS,
        KVM_PIO_PORTS,
        EXEC_EVENTS,
        SCHED_TGIDS,
        SCHED_READY,
        SCHED_HIST,
        MIGRATE_BYTES,
        MIGRATE_COUNTERS,
        MIGRATE_VCPUS,
        MIGRATE_ARM,
        INJECT_COUNT,
        SELFTEST_HIST,
        PROBE_HITS,
        AYA_LOGS,
    ];
    pub const GLOBALS: &[&str] = &[
        NET_CONFIG,
        KVM_CONFIG,
        SCHED_CONFIG,
        MIGRATE_CONFIG,
        INJECT_CONFIG,
    ];
}

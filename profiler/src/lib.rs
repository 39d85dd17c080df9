//! profiler: where virtualization overhead comes from. See ARCHITECTURE.md for the map.

pub mod agent;
pub mod attach;
pub mod boot;
pub mod check;
pub mod cleanup;
pub mod container;
pub mod docker;
pub mod doctor;
pub mod envs;
pub mod exe;
pub mod experiment;
pub mod export;
pub mod fit;
pub mod hist;
pub mod inject;
pub mod kernel;
pub mod kvm;
pub mod lab;
pub mod mariadb;
pub mod migrate;
pub mod opts;
pub mod probes;
pub mod progress;
pub mod server;
pub mod startup;
pub mod sysbench;
pub mod trace;
pub mod web;
pub mod workload;

/// What a killed run of each room leaves, removed by `cleanup::reap_stale` at every command's
/// start (after QEMU processes, before Docker and libvirt): `main` registers these, so
/// `cleanup` names no room.
pub const REAPERS: &[cleanup::Reaper] = &[
    cleanup::Reaper {
        what: "labs",
        reap: || {
            lab::reap_stale();
        },
    },
    cleanup::Reaper {
        what: "cgroups",
        reap: || {
            if let Ok(root) = container::cgroup::root() {
                let live: Vec<String> = lab::list().into_iter().map(|d| d.id).collect();
                container::cgroup::reap_stale(&root, &live);
            }
        },
    },
    cleanup::Reaper {
        what: "server directories",
        reap: server::reap_stale,
    },
    cleanup::Reaper {
        what: "temp files",
        reap: boot::artefacts::reap_stale,
    },
    cleanup::Reaper {
        what: "injector filters",
        reap: inject::reap_stale,
    },
    cleanup::Reaper {
        what: "MariaDB servers and data",
        reap: mariadb::reap_stale,
    },
];

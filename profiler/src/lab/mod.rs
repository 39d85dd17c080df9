//! The lab: container network modes built in network namespaces through netlink.

pub mod netns;

//! A tap device on a lab bridge: a VM's NIC (qemu's `-netdev tap,ifname=...`). Netlink cannot
//! create a tap, so it is made by ioctl on /dev/net/tun, persistent so that qemu attaches to it
//! by name; the lab's namespace removal takes it with the rest of the lab.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Description, Role, link::Ns, netns};

const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETPERSIST: u64 = 0x4004_54cb;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Creates (persist) or removes (!persist) the tap `name` in the calling thread's namespace.
fn set_persist(name: &str, persist: bool) -> Result<()> {
    if name.len() >= 16 {
        bail!("tap name {name} is too long");
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (CONFIG_TUN, module tun)")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is, for the call's length.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .with_context(|| format!("TUNSETIFF {name}"));
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETPERSIST as _, persist as libc::c_ulong) } < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .with_context(|| format!("TUNSETPERSIST {name}"));
    }
    Ok(())
}

/// A tap on the lab's first bridge, up; returns its namespace. Remove it with [`remove`].
pub fn add(desc: &Description, name: &str) -> Result<String> {
    let br = desc
        .device(Role::Bridge)
        .next()
        .ok_or_else(|| anyhow!("lab {} has no bridge for a VM's tap", desc.id))?;
    let (ns, bridge) = (br.netns.clone(), br.name.clone());
    let tap = name.to_string();
    netns::run_in(&ns, move || set_persist(&tap, true))
        .with_context(|| format!("creating the tap {name} in {ns}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let enslave = rt.block_on(async {
        let h = Ns::open(&ns)?;
        h.master(name, &bridge).await?;
        h.up(name).await
    });
    if let Err(e) = enslave {
        let _ = remove(&ns, name);
        return Err(e);
    }
    Ok(ns)
}

pub fn remove(ns: &str, name: &str) -> Result<()> {
    let tap = name.to_string();
    netns::run_in(ns, move || set_persist(&tap, false))
        .with_context(|| format!("removing the tap {name} in {ns}"))
}

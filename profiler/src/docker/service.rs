//! A long-running server in a Docker container (`web --env docker`): an image imported from a
//! root filesystem the caller assembles (no registry), one container on a Docker network,
//! its address and cgroup for the caller, both removed on every exit path (a signal hook
//! here, the owner label for the next run's reaper after a `kill -9`).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{CreateContainerOptionsBuilder, RemoveImageOptionsBuilder},
};

use super::{connect, connect_reaped, import, labels, remove_container, runtime};

/// A running service container.
pub struct Service {
    pub name: String,
    pub image: String,
    /// Its address on the Docker network.
    pub ip: IpAddr,
    /// Its first process, host-side.
    pub pid: u32,
    /// Where its CPU time is accounted, host-side ([`cgroup_of`]).
    pub cgroup: Option<PathBuf>,
    /// The daemon's storage driver (what the image's files sit on).
    pub storage_driver: String,
    key: String,
}

/// Imports `rootfs` (a tar) as an image and starts `cmd` from it on `network` (e.g. `bridge`),
/// waiting until Docker says it runs and has an address.
/// `binds`: `host:container[:ro]` bind mounts (a server's data, off the image's storage
/// driver).
pub fn start(
    rootfs: Vec<u8>,
    what: &str,
    cmd: Vec<String>,
    network: &str,
    binds: Vec<String>,
    timeout: Duration,
) -> Result<Service> {
    let me = crate::cleanup::Owner::me();
    let name = format!("profiler-{}-{}-{what}", me.pid, me.start);
    let tag_suffix = format!("{}-{what}", me.pid);
    let rt = runtime()?;
    let d = rt.block_on(connect_reaped())?;
    let storage_driver = rt
        .block_on(d.info())
        .ok()
        .and_then(|i| i.driver)
        .unwrap_or_else(|| "?".into());
    let image = rt.block_on(import(&d, rootfs, &tag_suffix))?;
    let key = format!("docker-service-{name}");
    let (n2, i2) = (name.clone(), image.clone());
    crate::cleanup::on_signal(&key, move || remove(&n2, &i2));
    let mut svc = Service {
        name: name.clone(),
        image: image.clone(),
        ip: IpAddr::from([0, 0, 0, 0]),
        pid: 0,
        cgroup: None,
        storage_driver,
        key,
    };
    // From here on a failure drops `svc`, which removes the container and the image.
    rt.block_on(async {
        d.create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(cmd),
                labels: Some(labels()),
                host_config: Some(HostConfig {
                    network_mode: Some(network.to_string()),
                    binds: Some(binds),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating container {name}"))?;
        d.start_container(&name, None)
            .await
            .with_context(|| format!("starting container {name}"))?;
        let t0 = std::time::Instant::now();
        loop {
            let i = d.inspect_container(&name, None).await?;
            let st = i.state.as_ref();
            if st.and_then(|s| s.running) == Some(false)
                && t0.elapsed() > Duration::from_millis(200)
            {
                bail!(
                    "container {name} exited ({:?}) right after its start",
                    st.and_then(|s| s.exit_code)
                );
            }
            let pid = st.and_then(|s| s.pid).unwrap_or(0);
            let ip = super::address(&i);
            if pid > 0
                && let Some(ip) = ip
            {
                svc.pid = pid as u32;
                svc.ip = ip.parse().map_err(|_| anyhow!("container address {ip}"))?;
                break;
            }
            if t0.elapsed() > timeout || crate::cleanup::stop_requested() {
                bail!("container {name} has no address after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    svc.cgroup = cgroup_of(svc.pid);
    Ok(svc)
}

/// Where `pid`'s CPU time is accounted, host-side: Docker's cgroup v1 `cpuacct` directory
/// where the daemon runs on v1 (a hybrid host: the v2 tree then holds the container in its
/// root, which counts everyone), else its cgroup v2 directory.
pub fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (_, controllers, rel) = (f.next()?, f.next()?, f.next()?);
        let rel = rel.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "cpuacct") && !rel.is_empty() {
            let d = std::path::Path::new("/sys/fs/cgroup")
                .join(controllers)
                .join(rel);
            if d.join("cpuacct.usage").exists() {
                return Some(d);
            }
        }
        if controllers.is_empty() && !rel.is_empty() {
            return Some(crate::container::cgroup::root().ok()?.join(rel));
        }
    }
    None
}

/// CPU time of a cgroup [`cgroup_of`] found, µs: v2's `cpu.stat`, v1's `cpuacct.usage` (ns).
pub fn cpu_usec(dir: &std::path::Path) -> Option<u64> {
    if let Ok(ns) = std::fs::read_to_string(dir.join("cpuacct.usage")) {
        return ns.trim().parse::<u64>().ok().map(|ns| ns / 1000);
    }
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// Removes the container and its image (blocking; each call a runtime of its own).
fn remove(name: &str, image: &str) {
    let Ok(rt) = runtime() else { return };
    rt.block_on(async {
        if let Ok(d) = connect().await {
            remove_container(&d, name).await;
            let _ = d
                .remove_image(
                    image,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await;
        }
    });
}

impl Drop for Service {
    fn drop(&mut self) {
        remove(&self.name, &self.image);
        crate::cleanup::forget(&self.key);
    }
}

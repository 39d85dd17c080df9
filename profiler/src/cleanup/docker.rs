//! Docker containers and images a dead owner left. Everything `docker/` makes carries the
//! label `profiler=1` and `profiler.owner=<pid>:<start>`; the payload images are tagged
//! `profiler-payload:<pid>[-self]`. The daemon may be absent or not answer: then nothing is
//! reaped and nothing waits (the socket is tried once, without retries).

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use bollard::{
    Docker,
    query_parameters::{
        ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
        RemoveImageOptionsBuilder,
    },
};

use super::Owner;

pub const SOCKET: &str = "/var/run/docker.sock";
pub const LABEL: &str = "profiler";
pub const OWNER_LABEL: &str = "profiler.owner";
pub const IMAGE: &str = "profiler-payload";
/// A daemon that accepts but does not answer must not hold up every command.
const LIMIT: Duration = Duration::from_secs(3);

/// The reaper's entry: quick when no daemon listens (one failed connect) or nothing is ours.
pub fn reap_stale() {
    if std::os::unix::net::UnixStream::connect(SOCKET).is_err() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(d) =
            Docker::connect_with_socket(SOCKET, LIMIT.as_secs(), bollard::API_DEFAULT_VERSION)
        else {
            return;
        };
        let d = match tokio::time::timeout(LIMIT, d.negotiate_version()).await {
            Ok(Ok(d)) => d,
            _ => return,
        };
        let _ = tokio::time::timeout(LIMIT, reap(&d)).await;
    });
}

/// Removes the containers and payload images whose owner is dead; returns what it removed.
pub async fn reap(d: &Docker) -> Result<Vec<String>> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL.to_string()])]);
    let containers = d
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let mut removed = vec![];
    for c in containers {
        if owner(c.labels.as_ref()).is_some_and(|o| o.alive()) {
            continue;
        }
        let Some(id) = c.id else { continue };
        let _ = d
            .remove_container(
                &id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
        let name = c
            .names
            .and_then(|n| n.first().cloned())
            .unwrap_or_else(|| id.clone());
        eprintln!("profiler: removed Docker container {name} (its owner is gone)");
        removed.push(name);
    }
    let images = d
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?;
    for i in images {
        if !image_is_stale(&i.labels, &i.repo_tags) {
            continue;
        }
        let _ = d
            .remove_image(
                &i.id,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await;
        let name = i.repo_tags.first().cloned().unwrap_or(i.id);
        eprintln!("profiler: removed Docker image {name} (its owner is gone)");
        removed.push(name);
    }
    Ok(removed)
}

fn owner(labels: Option<&HashMap<String, String>>) -> Option<Owner> {
    labels?.get(OWNER_LABEL)?.parse().ok()
}

/// An image of ours whose owner is dead: by its owner label, or (images imported before they
/// carried one) by the pid in its tag, when no process has that pid.
fn image_is_stale(labels: &HashMap<String, String>, tags: &[String]) -> bool {
    if let Some(o) = owner(Some(labels)) {
        return !o.alive();
    }
    let pids: Vec<u32> = tags
        .iter()
        .filter_map(|t| t.strip_prefix(IMAGE)?.strip_prefix(':'))
        .filter_map(|t| t.split('-').next()?.parse().ok())
        .collect();
    !pids.is_empty()
        && pids
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_stale_when_its_owner_is_gone() {
        let me = Owner::me();
        let label = |o: &Owner| HashMap::from([(OWNER_LABEL.to_string(), o.to_string())]);
        let dead = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(!image_is_stale(&label(&me), &[]));
        assert!(image_is_stale(&label(&dead), &[]));
        let tag = |t: &str| vec![format!("{IMAGE}:{t}")];
        let none = HashMap::new();
        assert!(!image_is_stale(&none, &tag(&format!("{}-self", me.pid))));
        // pid_max is at most 2^22: this pid exists nowhere.
        assert!(image_is_stale(&none, &tag("99999999")));
        assert!(!image_is_stale(&none, &["busybox:latest".to_string()]));
    }
}

//! The server role's records: what the registry was asked to register (services and whether
//! each is available, the agent node), remembered, and written into the session: at once when
//! connected, again on every new session, and periodically until a failed write succeeds.
use zookeeper_client as zk;

use super::layout::{NODE_SERVER, NODE_UNAVAILABLE, agent_node_path, node_path};
use super::session::{Session, delete_node, ensure_node};
use super::state::{Registered, Registrations, Shared};
use crate::registry::RegistryError;
use crate::url::Url;

impl Shared {
    /// Turn the outcome of a registry write into the caller's result; a failure is retried
    /// in the background. `None`: there was no connected session to write with.
    pub(super) fn settle(&self, result: Option<Result<(), zk::Error>>) -> Result<(), RegistryError> {
        let reason = match result {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => e.to_string(),
            None => "not connected to ZooKeeper".to_string(),
        };
        self.regs.lock().unwrap().dirty = true;
        Err(RegistryError::Unavailable {
            registry: self.name.clone(),
            message: format!("{reason}; kept and retried when ZooKeeper is reachable"),
        })
    }
}

/// Apply the remembered registrations. `all`: every node (a new session: nodes of the old one
/// must be re-created under this one); else only when something failed before.
pub(super) async fn reconcile(shared: &Shared, session: &Session, all: bool) {
    let _w = shared.writes.lock().await;
    let (services, agent, removed) = {
        let mut regs = shared.regs.lock().unwrap();
        if !all && !regs.dirty && regs.removed.is_empty() {
            return;
        }
        regs.dirty = false;
        (
            regs.services.values().cloned().collect::<Vec<_>>(),
            regs.agent.clone(),
            std::mem::take(&mut regs.removed),
        )
    };
    let mut failed = false;
    let mut still_removed = Vec::new();
    for url in removed {
        if delete_service_nodes(session, &url).await.is_err() {
            still_removed.push(url);
        }
    }
    if apply_services(session, &services).await.is_err() {
        failed = true;
    }
    if let Some(agent) = &agent
        && ensure_node(session, &agent_node_path(agent), agent)
            .await
            .is_err()
    {
        failed = true;
    }
    let mut regs = shared.regs.lock().unwrap();
    regs.dirty |= failed;
    regs.removed.extend(still_removed);
    if all {
        tracing::info!(
            registry = %shared.name,
            services = services.len(),
            agent = agent.is_some(),
            ok = !failed,
            "registrations applied to the new session"
        );
    }
}

/// Put each service's node where its state says (server or unavailableServer) and remove the
/// other one. Continues after a failure; returns the first error.
pub(super) async fn apply_services(session: &Session, services: &[Registered]) -> Result<(), zk::Error> {
    let mut result = Ok(());
    for r in services {
        let (want, other) = if r.available {
            (NODE_SERVER, NODE_UNAVAILABLE)
        } else {
            (NODE_UNAVAILABLE, NODE_SERVER)
        };
        let step = match delete_node(session, &node_path(&r.url, other)).await {
            Ok(()) => ensure_node(session, &node_path(&r.url, want), &r.url).await,
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            tracing::warn!(service = %r.url.identity(), "zookeeper write failed: {e}");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

pub(super) async fn delete_service_nodes(session: &Session, url: &Url) -> Result<(), zk::Error> {
    delete_node(session, &node_path(url, NODE_SERVER)).await?;
    delete_node(session, &node_path(url, NODE_UNAVAILABLE)).await
}

pub(super) fn check_service(name: &str, url: &Url) -> Result<(), RegistryError> {
    if url.group.is_empty() || url.path.is_empty() || url.host.is_empty() {
        return Err(RegistryError::Config {
            registry: name.to_string(),
            message: format!("service URL {} needs group, path and host", url.identity()),
        });
    }
    Ok(())
}

/// Mark `service` (a URL not registered yet is registered by this, as upstream's `Available`
/// creates the node anyway) or every registered service; returns the services to apply.
pub(super) fn set_available(
    regs: &mut Registrations,
    service: Option<&Url>,
    available: bool,
) -> Vec<Registered> {
    match service {
        Some(url) => {
            let r = Registered {
                url: url.clone(),
                available,
            };
            regs.services.insert(url.identity(), r.clone());
            vec![r]
        }
        None => regs
            .services
            .values_mut()
            .map(|r| {
                r.available = available;
                r.clone()
            })
            .collect(),
    }
}

//! Discovery for one cluster (4.4, 4.10): the server lists of the refer's own group from every
//! registry, the commands that apply to it (agent and service command nodes), and the lists of
//! the merge groups a traffic-control command names. Every change recomputes the endpoints per
//! registry and hands them, with the group weights, to the cluster; degrade and switcher
//! commands are applied as they come. One task per cluster owns this state.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Cluster;
use super::idc::{self, PingFn};
use crate::config::motan::IDC_PLACEHOLDER;
use crate::locks::Locked;
use crate::registry::command::{CommandSource, ReferCommands, SwitcherOverrides};
use crate::registry::{CommandScope, Registry, ServerList};
use crate::switcher::Switchers;
use crate::url::Url;

/// What discovery needs from the agent.
#[derive(Clone)]
pub struct DiscoveryContext {
    /// This agent's IP, matched by route rules.
    pub local_ip: String,
    /// The agent's application (its command node is `/motan/agent/<application>/command`).
    pub application: String,
    pub switchers: Arc<Switchers>,
    /// Switcher values set by commands (process-wide, like switchers), to restore them.
    pub overrides: Arc<std::sync::Mutex<SwitcherOverrides>>,
    /// `-idc`: what `${idc}` in a refer's group is tried as first (`idc.rs`); empty without.
    pub idc: String,
    /// How `${idc}` resolution measures a host (`idc::icmp_ping` in the agent).
    pub ping: PingFn,
}

enum Event {
    List {
        registry: String,
        group: String,
        list: ServerList,
    },
    Command {
        source: CommandSource,
        text: Option<String>,
    },
}

/// Forward a watch channel's values as events until the cluster stops or the sender is gone.
fn forward<T: Clone + Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
    tx: mpsc::UnboundedSender<Event>,
    stop: tokio_util::sync::CancellationToken,
    make: impl Fn(T) -> Event + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let v = rx.borrow_and_update().clone();
            if tx.send(make(v)).is_err() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    })
}

fn subscribe(
    cluster: &Arc<Cluster>,
    registry: (&str, &Arc<dyn Registry>),
    group: &str,
    tx: &mpsc::UnboundedSender<Event>,
) -> JoinHandle<()> {
    let mut refer: Url = (*cluster.refer()).clone();
    refer.group = group.to_string();
    let (id, reg) = (registry.0.to_string(), registry.1.clone());
    let (tx, stop, group, conf) = (
        tx.clone(),
        cluster.stopped().clone(),
        group.to_string(),
        cluster.conf_id.clone(),
    );
    tokio::spawn(async move {
        match reg.subscribe(&refer).await {
            Ok(rx) => {
                let registry = id.clone();
                let _ = forward(rx, tx, stop, move |list| Event::List {
                    registry: registry.clone(),
                    group: group.clone(),
                    list,
                })
                .await;
            }
            Err(e) => tracing::error!(cluster = %conf, registry = %id, "subscribe failed: {e}"),
        }
    })
}

/// Subscribe to every registry of the refer (and to its commands) and follow them until
/// `stop` .
pub fn start(
    cluster: &Arc<Cluster>,
    registries: &BTreeMap<String, Arc<dyn Registry>>,
    ctx: &DiscoveryContext,
) -> Result<(), String> {
    let ids: Vec<String> = cluster
        .refer()
        .get_list(crate::url::keys::REGISTRY)
        .into_iter()
        .map(String::from)
        .collect();
    if ids.is_empty() {
        // The configuration warned: such a refer never has endpoints (and is ready at once).
        return Ok(());
    }
    let mut regs = Vec::new();
    for id in ids {
        let Some(reg) = registries.get(&id).cloned() else {
            return Err(format!("key registry: no motan-registry entry {id:?}"));
        };
        regs.push((id, reg));
    }
    cluster.set_registry_count(regs.len());
    tokio::spawn(run(cluster.clone(), regs, ctx.clone()));
    Ok(())
}

async fn run(cluster: Arc<Cluster>, registries: Vec<(String, Arc<dyn Registry>)>, ctx: DiscoveryContext) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut own = cluster.refer().group.clone();
    if own.contains(IDC_PLACEHOLDER)
        && let Some((id, reg)) = registries.first()
    {
        let Some(r) = resolve_idc(&cluster, reg.as_ref(), &ctx).await else {
            return; // stopped
        };
        let rtts: Vec<String> = r
            .rtts
            .iter()
            .map(|(g, v)| match v {
                Ok(d) => format!("{g}={d:?}"),
                Err(e) => format!("{g}=({e})"),
            })
            .collect();
        tracing::info!(
            cluster = %cluster.conf_id, registry = %id, configured = %own, candidates = ?r.candidates,
            rule = r.rule, rtts = ?rtts, "idc: group resolved to {}", r.group
        );
        if let Some(w) = &r.warning {
            tracing::warn!(cluster = %cluster.conf_id, "idc: {w}");
        }
        cluster.set_resolved_group(&r.group, r.to_json());
        own = r.group;
    }
    let mut subs: HashMap<(String, String), JoinHandle<()>> = HashMap::new();
    for (id, reg) in &registries {
        subs.insert(
            (id.clone(), own.clone()),
            subscribe(&cluster, (id, reg), &own, &tx),
        );
    }
    // Commands come from the first registry that has them (direct registries have none).
    if let Some((_, reg)) = registries.first() {
        for (scope, source) in [
            (CommandScope::Group(own.clone()), CommandSource::Service),
            (CommandScope::Agent(ctx.application.clone()), CommandSource::Agent),
        ] {
            match reg.subscribe_commands(&scope).await {
                Ok(w) => {
                    forward(w, tx.clone(), cluster.stopped().clone(), move |text| {
                        Event::Command { source, text }
                    });
                }
                Err(e) => tracing::warn!(cluster = %cluster.conf_id, "command watch failed: {e}"),
            }
        }
    }
    let mut lists: BTreeMap<(String, String), ServerList> = BTreeMap::new();
    let mut commands = ReferCommands::new(&cluster.refer());
    let mut applied_tc = commands.traffic_control();
    ensure_groups(&cluster, &registries, &applied_tc, &own, &mut subs, &tx);
    loop {
        let ev = tokio::select! {
            _ = cluster.stopped().cancelled() => break,
            ev = rx.recv() => match ev { Some(ev) => ev, None => break },
        };
        match ev {
            Event::List {
                registry,
                group,
                list,
            } => {
                let first = !lists.contains_key(&(registry.clone(), group.clone()));
                lists.insert((registry, group.clone()), list);
                if first && group == own {
                    cluster.registry_seen();
                }
            }
            Event::Command { source, text } => {
                let Some(update) = commands.update(source, text.as_deref()) else {
                    continue; // identical text
                };
                for e in &update.errors {
                    tracing::warn!(cluster = %cluster.conf_id, "{e}");
                }
                let eff = &update.effective;
                tracing::info!(
                    cluster = %cluster.conf_id, ?source,
                    traffic_control = eff.traffic_control.is_some(), degrade = eff.is_degraded(),
                    switcher = eff.switcher.is_some(), "commands changed"
                );
                cluster.set_degraded(eff.is_degraded());
                let switchers = &ctx.switchers;
                let set = ctx
                    .overrides
                    .locked()
                    .apply(&eff.switchers(), |n| switchers.get(n));
                for (name, value) in set {
                    switchers.set(&name, value);
                }
                applied_tc = commands.traffic_control();
                ensure_groups(&cluster, &registries, &applied_tc, &own, &mut subs, &tx);
            }
        }
        let count = registries.len();
        for (id, _) in &registries {
            let own_list = lists.get(&(id.clone(), own.clone())).cloned().unwrap_or_default();
            match &applied_tc {
                None => cluster.apply(id, count, &own_list, None),
                Some(tc) => {
                    let r = tc.apply(
                        &own,
                        &own_list,
                        |g| lists.get(&(id.clone(), g.to_string())).map(|l| l.as_slice()),
                        &ctx.local_ip,
                    );
                    cluster.apply(id, count, &r.endpoints, r.group_weights.as_deref());
                }
            }
        }
    }
    for (_, h) in subs {
        h.abort();
    }
}

/// How long discovery waits before asking a registry that could not answer again.
const IDC_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolve `${idc}` in the cluster's group against `reg` (`idc.rs`), asking again while the
/// registry cannot answer and `-idc` gives no fallback. `None`: the cluster stopped.
async fn resolve_idc(
    cluster: &Arc<Cluster>,
    reg: &dyn Registry,
    ctx: &DiscoveryContext,
) -> Option<idc::Resolution> {
    let refer = cluster.refer();
    let mut warned = false;
    loop {
        let r = tokio::select! {
            _ = cluster.stopped().cancelled() => return None,
            r = idc::resolve(&refer, reg, &ctx.idc, &ctx.ping) => r,
        };
        let e = match r {
            Ok(r) => return Some(r),
            Err(e) => e,
        };
        if let Some(r) = idc::unreachable_fallback(&refer.group, &ctx.idc, &e) {
            return Some(r);
        }
        if !warned {
            tracing::warn!(cluster = %cluster.conf_id, "idc: cannot resolve {:?} yet ({e}); asking again every {IDC_RETRY:?}", refer.group);
            warned = true;
        }
        tokio::select! {
            _ = cluster.stopped().cancelled() => return None,
            _ = tokio::time::sleep(IDC_RETRY) => {}
        }
    }
}

/// Subscribe to the merge groups the traffic control names and drop the ones it no longer does.
fn ensure_groups(
    cluster: &Arc<Cluster>,
    registries: &[(String, Arc<dyn Registry>)],
    tc: &Option<crate::registry::command::TrafficControl>,
    own: &str,
    subs: &mut HashMap<(String, String), JoinHandle<()>>,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let wanted: Vec<String> = tc
        .as_ref()
        .map(|t| t.other_groups(own).into_iter().map(String::from).collect())
        .unwrap_or_default();
    subs.retain(|(_, g), h| {
        let keep = g == own || wanted.contains(g);
        if !keep {
            h.abort();
        }
        keep
    });
    for (id, reg) in registries {
        for g in &wanted {
            subs.entry((id.clone(), g.clone()))
                .or_insert_with(|| subscribe(cluster, (id, reg), g, tx));
        }
    }
}

//! Data-plane shards (`sockmesh.shards`): one current-thread runtime per worker thread, each
//! serving its share of the accepted connections and owning its share of every upstream pool.
//!
//! On the multi-threaded runtime a request crosses threads several times: the connection's
//! task runs on one worker, the upstream channel's reader and writer tasks on others, and each
//! hand-over is a cross-thread wake-up (a futex, a context switch on a 2-core machine). On a
//! shard, the connection, the upstream channels it uses and their tasks share one thread, so a
//! request is woken where it runs. The TCP listeners of the data plane (agent port, export
//! ports, the host's transparent listeners) are groups of one SO_REUSEPORT socket per shard
//! (`net::listen_group`), each accepted on its shard, so a new connection starts where it is
//! served. Other listeners (the agent's Unix socket, transparent listeners in other network
//! namespaces) accept on the main runtime and hand connections to the shards round-robin. The
//! admin API, discovery and everything else stay on the main runtime.
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::sections::ShardPolicy;

/// How often a shard proves it runs (see [`longest_stall`]).
const TICK: Duration = Duration::from_millis(100);

/// How long [`stop`] waits for the shards' threads.
const STOP_WAIT: Duration = Duration::from_secs(2);

struct Shard {
    handle: tokio::runtime::Handle,
    /// When the shard last ran its tick, in [`crate::sys::monotonic_ms`].
    ticked: AtomicU64,
}

struct Shards {
    shards: Vec<Shard>,
    next: AtomicUsize,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

static SHARDS: OnceLock<Shards> = OnceLock::new();

thread_local! {
    /// The shard this thread runs, if it is a shard's thread.
    static CURRENT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The shard whose thread the caller runs on, if any.
fn current() -> Option<usize> {
    CURRENT.with(|c| c.get())
}

/// Start `n` shards on threads `sm-shard-K` (once per process; `n` = 0 starts none), scheduled
/// by `policy`. The name fits the kernel's 15 characters, so `top -H` and /proc tell the shards
/// apart.
pub fn start(n: usize, policy: ShardPolicy) -> std::io::Result<()> {
    if n == 0 || SHARDS.get().is_some() {
        return Ok(());
    }
    let stop = CancellationToken::new();
    let mut shards = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    for k in 0..n {
        // I/O and timers only: signals and child processes are the main runtime's.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name(format!("sm-shard-{k}"))
            .build()?;
        shards.push(Shard {
            handle: rt.handle().clone(),
            ticked: AtomicU64::new(crate::sys::monotonic_ms()),
        });
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("sm-shard-{k}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(k)));
                    if let Err(e) = set_policy(policy) {
                        tracing::warn!("shard {k}: cannot set scheduling policy {policy:?}: {e}");
                    }
                    rt.block_on(async {
                        let mut tick = tokio::time::interval(TICK);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tick.tick() => {
                                    if let Some(s) = SHARDS.get() {
                                        s.shards[k].ticked.store(crate::sys::monotonic_ms(), Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                    });
                    // Whatever is left (the daemon drained its connections before) is dropped
                    // here, on the shard's own thread.
                    drop(rt);
                })?,
        );
    }
    let _ = SHARDS.set(Shards {
        shards,
        next: AtomicUsize::new(0),
        stop,
        threads: Mutex::new(threads),
    });
    Ok(())
}

/// Schedule the calling thread by `policy` (SCHED_OTHER or SCHED_BATCH, priority 0).
fn set_policy(policy: ShardPolicy) -> std::io::Result<()> {
    let p = match policy {
        ShardPolicy::Normal => return Ok(()),
        ShardPolicy::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, p, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Stop the shards and wait (at most [`STOP_WAIT`]) for their threads.
pub fn stop() {
    let Some(s) = SHARDS.get() else { return };
    s.stop.cancel();
    let threads = std::mem::take(&mut *s.threads.lock().unwrap_or_else(|e| e.into_inner()));
    let until = Instant::now() + STOP_WAIT;
    for t in threads {
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// How many shards run (0: everything is on the main runtime).
pub fn count() -> usize {
    SHARDS.get().map_or(0, |s| s.shards.len())
}

/// The longest time since a shard last ticked: a shard whose thread is stalled (a blocking
/// call, a busy loop) stops ticking, and the stuck-agent heartbeat stops with it.
pub fn longest_stall() -> Duration {
    let Some(s) = SHARDS.get() else {
        return Duration::ZERO;
    };
    let now = crate::sys::monotonic_ms();
    let oldest = s
        .shards
        .iter()
        .map(|x| x.ticked.load(Ordering::Relaxed))
        .min()
        .unwrap_or(now);
    Duration::from_millis(now.saturating_sub(oldest))
}

/// A connection that can leave the runtime it was accepted on for a shard's.
pub trait Rehome: Sized + Send + 'static {
    type Std: Send + 'static;
    /// Out of the current runtime (its registration is dropped, the socket stays open).
    fn unhome(self) -> std::io::Result<Self::Std>;
    /// Into the runtime this is called on.
    fn rehome(s: Self::Std) -> std::io::Result<Self>;
}

impl Rehome for tokio::net::TcpStream {
    type Std = std::net::TcpStream;
    fn unhome(self) -> std::io::Result<Self::Std> {
        self.into_std()
    }
    fn rehome(s: Self::Std) -> std::io::Result<Self> {
        tokio::net::TcpStream::from_std(s)
    }
}

impl Rehome for tokio::net::UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn unhome(self) -> std::io::Result<Self::Std> {
        self.into_std()
    }
    fn rehome(s: Self::Std) -> std::io::Result<Self> {
        tokio::net::UnixStream::from_std(s)
    }
}

/// Serve `conn` with `serve` on the next shard (round-robin), tracked by `tasks`; on the
/// current runtime when no shards run.
pub fn serve<C, F, Fut>(tasks: &TaskTracker, conn: C, serve: F)
where
    C: Rehome,
    F: FnOnce(C) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Accepted on a shard (its own listener of a group, `net::listen_group`): served there.
    let on_shard = current().is_some();
    let Some(s) = SHARDS.get().filter(|_| !on_shard) else {
        tasks.spawn(serve(conn));
        return;
    };
    let shard = &s.shards[s.next.fetch_add(1, Ordering::Relaxed) % s.shards.len()];
    let conn = match conn.unhome() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("connection dropped: cannot hand it to a shard: {e}");
            return;
        }
    };
    shard.handle.spawn(tasks.track_future(async move {
        match C::rehome(conn) {
            Ok(c) => serve(c).await,
            Err(e) => tracing::debug!("connection dropped: a shard cannot take it: {e}"),
        }
    }));
}

/// Run the accept loop `fut` of socket `k` of a listener group of `sockets` sockets
/// (`net::listen_group`): on shard `k` when each shard has its socket (also the one socket of a
/// single shard), otherwise (one socket for several shards, or no shards) on the current
/// runtime, which hands each connection to a shard ([`serve`]).
pub fn spawn_accept<F>(k: usize, sockets: usize, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match accept_on(k, sockets, count()) {
        Some(shard) => spawn_for_slot(shard, fut),
        None => {
            tokio::spawn(fut);
        }
    }
}

/// The shard that accepts on socket `k` of a group of `sockets`, when `shards` run.
fn accept_on(k: usize, sockets: usize, shards: usize) -> Option<usize> {
    (shards > 0 && sockets == shards).then_some(k)
}

/// How many slots a pool of `size` channels has: at least one per shard, so that every shard
/// has a channel of its own to each endpoint.
pub fn pool_slots(size: usize) -> usize {
    size.max(count()).max(1)
}

/// Which of `slots` slots the caller's `turn` takes: on a shard, one of the slots that shard
/// owns (slot `i` belongs to shard `i mod n`); elsewhere any.
pub fn slot_for(turn: usize, slots: usize) -> usize {
    slot_on(current(), count(), turn, slots)
}

fn slot_on(shard: Option<usize>, shards: usize, turn: usize, slots: usize) -> usize {
    match shard {
        Some(k) if shards > 0 && k < slots => {
            let owned = (slots - k).div_ceil(shards);
            k + (turn % owned) * shards
        }
        _ => turn % slots,
    }
}

/// Run the connect of slot `i` (and so the channel's tasks) on the shard that owns the slot;
/// on the current runtime when no shards run.
pub fn spawn_for_slot<F>(i: usize, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match SHARDS.get() {
        Some(s) => {
            s.shards[i % s.shards.len()].handle.spawn(fut);
        }
        None => {
            tokio::spawn(fut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{accept_on, slot_on};

    #[test]
    fn a_group_with_a_socket_per_shard_accepts_on_the_shards() {
        // One socket per shard, one shard included: each accepts where it serves.
        assert_eq!(accept_on(0, 1, 1), Some(0));
        assert_eq!(
            (0..2).map(|k| accept_on(k, 2, 2)).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        // One socket for two shards (the reuseport program could not be attached), or no
        // shards at all: the current runtime accepts.
        assert_eq!(accept_on(0, 1, 2), None);
        assert_eq!(accept_on(0, 1, 0), None);
    }

    #[test]
    fn slots_are_spread_over_the_shards_that_own_them() {
        // Two shards, four slots: shard 0 owns 0 and 2, shard 1 owns 1 and 3.
        let taken: Vec<_> = (0..4).map(|t| slot_on(Some(0), 2, t, 4)).collect();
        assert_eq!(taken, [0, 2, 0, 2]);
        let taken: Vec<_> = (0..4).map(|t| slot_on(Some(1), 2, t, 4)).collect();
        assert_eq!(taken, [1, 3, 1, 3]);
        // Three slots over two shards: shard 0 owns 0 and 2, shard 1 only 1.
        let taken: Vec<_> = (0..4).map(|t| slot_on(Some(1), 2, t, 3)).collect();
        assert_eq!(taken, [1, 1, 1, 1]);
        let taken: Vec<_> = (0..3).map(|t| slot_on(Some(0), 2, t, 3)).collect();
        assert_eq!(taken, [0, 2, 0]);
        // Off the shards, and for a pool made before the shards (fewer slots): any slot.
        let taken: Vec<_> = (0..3).map(|t| slot_on(None, 2, t, 3)).collect();
        assert_eq!(taken, [0, 1, 2]);
        assert_eq!(slot_on(Some(3), 4, 5, 2), 1);
    }
}

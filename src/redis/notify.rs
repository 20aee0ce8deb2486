//! "Capacity may have freed" notifications over Redis pub/sub, for waiting
//! acquires. The scripts `PUBLISH` on `<ns>:{<pool>}:freed` (the pool's hash tag,
//! so the channel can move to sharded pub/sub with the pool's slot); one
//! subscriber connection per storage fans them out to local waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::broadcast;

pub(crate) struct Notifier {
    client: redis::Client,
    channels: Mutex<HashMap<String, broadcast::Sender<()>>>,
    sink: Mutex<Option<PubSubSink>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Notifier {
    pub(crate) fn new(client: redis::Client) -> Arc<Self> {
        Arc::new(Notifier {
            client,
            channels: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            task: Mutex::new(None),
        })
    }

    /// A receiver woken on every message of `channel`; subscribes on first use.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: String) -> broadcast::Receiver<()> {
        let (rx, new) = {
            let mut channels = lock(&self.channels);
            match channels.get(&channel) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(16);
                    channels.insert(channel.clone(), tx);
                    (rx, true)
                }
            }
        };
        {
            let mut task = lock(&self.task);
            if task.is_none() {
                *task = Some(tokio::spawn(run(Arc::downgrade(self))));
            }
        }
        if new {
            let sink = lock(&self.sink).clone();
            if let Some(mut sink) = sink {
                // On failure the reconnect loop subscribes every channel again.
                let _ = sink.subscribe(&channel).await;
            }
        }
        rx
    }

    fn wake_all(&self) {
        for tx in lock(&self.channels).values() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

/// Keeps one subscriber connection up, resubscribing after a reconnect; ends
/// when the storage is gone.
async fn run(me: Weak<Notifier>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(n) = me.upgrade() else { return };
        let connected = n.client.get_async_pubsub().await;
        match connected {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                let (mut sink, mut stream) = pubsub.split();
                let mut done: Vec<String> = Vec::new();
                loop {
                    let todo: Vec<String> = lock(&n.channels)
                        .keys()
                        .filter(|c| !done.contains(c))
                        .cloned()
                        .collect();
                    if todo.is_empty() {
                        break;
                    }
                    for c in todo {
                        let _ = sink.subscribe(&c).await;
                        done.push(c);
                    }
                    *lock(&n.sink) = Some(sink.clone());
                }
                // Messages may have been missed while disconnected.
                n.wake_all();
                drop(n);
                while let Some(msg) = stream.next().await {
                    let Some(n) = me.upgrade() else { return };
                    let tx = lock(&n.channels).get(msg.get_channel_name()).cloned();
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                }
                let Some(n) = me.upgrade() else { return };
                *lock(&n.sink) = None;
                n.wake_all();
            }
            Err(_) => {
                drop(n);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

//! A TCP forwarder that delays each direction, for slow-link tests.
//!
//! [`Forwarder::start`] listens on a free loopback port and connects each
//! client to the target; every chunk read from one side is written to the
//! other `delay` after it was read (never earlier), in order. The kernel has
//! no `netem` here, so the delay lives in the test. It runs on a thread of its
//! own with a current-thread tokio runtime, so a test's own runtime (a
//! current-thread one, say) is not disturbed. tokio's timer rounds a sleep up
//! to its 1 ms ticks: a chunk is held `delay` to `delay` + ~1 ms.
//! (`benches/redis.rs` has a finer-grained one, for timing.)

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A running forwarder; stopped (every connection closed) on drop.
pub struct Forwarder {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Forwards `127.0.0.1:<port>` to `target`, holding every chunk `delay`
    /// each way.
    pub fn start(target: SocketAddr, delay: Duration) -> std::io::Result<Forwarder> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("forwarder".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, target, delay) => {}
                    }
                });
                // Dropping the runtime drops every connection's tasks.
            })?;
        Ok(Forwarder {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, delay: Duration) {
    loop {
        match listener.accept().await {
            Ok((inbound, _)) => {
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return; // dropping `inbound` closes the client's side
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (client_read, client_write) = inbound.into_split();
                    let (server_read, server_write) = outbound.into_split();
                    tokio::spawn(delayed_copy(client_read, server_write, delay));
                    tokio::spawn(delayed_copy(server_read, client_write, delay));
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Copies `from` to `to`: a reader stamps each chunk with the time it arrived,
/// a writer sends each one in order once `delay` has passed since its stamp.
async fn delayed_copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((arrived, chunk)) = rx.recv().await {
            tokio::time::sleep_until(arrived + delay).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

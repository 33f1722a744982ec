//! Connections: the TCP accept loop and the TLS handshake of each connection in its own task.
//!
//! We accept TCP ourselves (tonic's TLS cannot hot-reload certificates): every connection is
//! handshaken in its own task with `limits.handshake_timeout_ms`, so a slow or silent client
//! never blocks the accept loop; failed handshakes (no client certificate, another CA,
//! plaintext) are logged at debug and dropped. Tonic puts the peer's [`PeerInfo`] into every
//! request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Shared;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::server::Connected;

use crate::tls::{PeerInfo, TlsStore};

pub(super) type Kill = Shared<oneshot::Receiver<()>>;

/// How TLS handshakes are bounded: each in time, all together in number.
pub(super) struct Handshakes {
    pub(super) timeout: Duration,
    pub(super) permits: Arc<tokio::sync::Semaphore>,
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<TlsStore>,
    handshakes: Handshakes,
    tx: mpsc::Sender<TlsConn>,
    kill: Kill,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = tx.closed() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(error = %err, "accept failed");
                    // Out of file descriptors and the like: don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Shed rather than queue: a queued handshake would mostly time out anyway, and the
        // accept loop must stay free for the connections that can be served.
        let Ok(permit) = Arc::clone(&handshakes.permits).try_acquire_owned() else {
            tracing::debug!(peer = %remote, "too many TLS handshakes in progress; connection closed");
            drop(tcp);
            continue;
        };
        let handshake_timeout = handshakes.timeout;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let store = store.clone();
        let tx = tx.clone();
        let kill = kill.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            drop(permit);
            crate::stats::tls_server_handshake(matches!(handshake, Ok(Ok(_))));
            match handshake {
                Ok(Ok(tls)) => {
                    let workload = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| store.workload_of(leaf));
                    let conn = TlsConn {
                        inner: tls,
                        info: PeerInfo {
                            remote_addr: Some(remote),
                            workload,
                        },
                        kill,
                    };
                    let _ = tx.send(conn).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(peer = %remote, error = %err, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(peer = %remote, "TLS handshake timed out");
                }
            }
        });
    }
}

/// An accepted mTLS connection: tonic reads its [`PeerInfo`] through [`Connected`].
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    kill: Kill,
}

impl TlsConn {
    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.kill).poll(cx).is_ready()
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Ok(())); // EOF
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.killed(cx) {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

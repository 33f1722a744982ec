//! The echo baseline: a bare tonic service (no carehub layers) behind the same mTLS server
//! configuration the platform builds ([`TlsStore::server_config`]), answering each request with
//! its own payload. It runs on a runtime of its own whose threads are named [`THREAD_NAME`], so
//! that its CPU can be told apart from the load generator's.
//!
//! Backed by a database ([`Backing`]), it is one of two reads of the scratch-database
//! scenarios. `db-read`: each answer first reads one row by primary key on a pooled connection,
//! as a service's read does, with no audit event: the ceiling of any read served from
//! PostgreSQL per request. `audit-read`: each answer waits until its read event is durable,
//! through the platform's group commit ([`carehub_platform::call::reads`]), exactly as a
//! service's `Call::read` does, and the sequencer runs on the same runtime (its CPU is server
//! CPU).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::transport::server::Connected;
use tonic::transport::Channel;

use carehub_platform::audit::{Action, AuditEvent, Purpose};
use carehub_platform::tls::TlsStore;

use super::engine::{Op, OpFuture};

/// Threads of the echo server's runtime.
pub const THREAD_NAME: &str = "lg-echo";
const PATH: &str = "/carehub.loadgen.v1.Echo/Echo";

/// `message EchoMessage { bytes payload = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
}

/// Rows of the `db-read` table ([`create_read_table`]); the reads cycle through them.
pub const READ_ROWS: u64 = 10_000;
/// The `db-read` table's name, as a literal for `concat!`.
macro_rules! read_table {
    () => {
        "loadgen_echo_rows"
    };
}
/// `db-read`'s query, built once rather than per request.
const READ_ROW: &str = concat!("SELECT payload FROM ", read_table!(), " WHERE id = $1");

/// What the echo server does before it answers.
#[derive(Clone, Default)]
pub enum Backing {
    /// Nothing: the bare baseline.
    #[default]
    None,
    /// Reads one row of the `db-read` table by primary key (no audit event).
    Read(sqlx::PgPool),
    /// Waits until its read event is durable (group commit), a sequencer sealing meanwhile.
    Audit(sqlx::PgPool),
}

/// Creates and fills the `db-read` table in `pool`'s database ([`READ_ROWS`] rows of
/// `payload_bytes`), and gathers its statistics.
pub async fn create_read_table(pool: &sqlx::PgPool, payload_bytes: usize) -> anyhow::Result<()> {
    sqlx::query(concat!(
        "CREATE TABLE ",
        read_table!(),
        " (id bigint PRIMARY KEY, payload bytea NOT NULL)"
    ))
    .execute(pool)
    .await?;
    sqlx::query(concat!(
        "INSERT INTO ",
        read_table!(),
        " (id, payload)
         SELECT g, decode(repeat('5a', $2), 'hex') FROM generate_series(0, $1 - 1) g"
    ))
    .bind(i64::try_from(READ_ROWS)?)
    .bind(i32::try_from(payload_bytes)?)
    .execute(pool)
    .await?;
    sqlx::query(concat!("ANALYZE ", read_table!()))
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Clone)]
struct EchoService {
    backing: Backing,
    reads: Arc<AtomicU64>,
}

struct EchoUnary {
    backing: Backing,
    reads: Arc<AtomicU64>,
}

impl tonic::server::UnaryService<EchoMessage> for EchoUnary {
    type Response = EchoMessage;
    type Future = BoxFuture<tonic::Response<EchoMessage>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<EchoMessage>) -> Self::Future {
        let backing = self.backing.clone();
        let row = self.reads.fetch_add(1, Ordering::Relaxed) % READ_ROWS;
        Box::pin(async move {
            match backing {
                Backing::None => {}
                Backing::Read(pool) => {
                    let (payload,): (Vec<u8>,) = sqlx::query_as(READ_ROW)
                        .bind(i64::try_from(row).unwrap_or_default())
                        .fetch_one(&pool)
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    return Ok(tonic::Response::new(EchoMessage { payload }));
                }
                Backing::Audit(pool) => {
                    let reader = uuid::Uuid::now_v7();
                    let event = AuditEvent::new(
                        "loadgen.echo.read",
                        Action::Read,
                        Purpose::Operations,
                        "echo",
                        reader,
                    )
                    .actor_user(reader)
                    .actor_role("patient");
                    carehub_platform::call::reads::record(&pool, event).await?;
                }
            }
            Ok(tonic::Response::new(request.into_inner()))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for EchoService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let unary = EchoUnary {
            backing: self.backing.clone(),
            reads: self.reads.clone(),
        };
        Box::pin(async move {
            if req.uri().path() != PATH {
                return Ok(tonic::Status::unimplemented("only Echo").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(unary, req).await)
        })
    }
}

/// An accepted mTLS connection, as tonic's server wants it.
struct EchoConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for EchoConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for EchoConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for EchoConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A running echo server; dropping it stops it.
pub struct EchoServer {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts the echo server on 127.0.0.1:0 with `store` as its server identity (mTLS: client
/// certificates of the same CA are required, as on every carehub port), answering as
/// `backing` says; with [`Backing::Audit`] a sequencer seals the read events.
pub async fn start(
    store: &Arc<TlsStore>,
    worker_threads: usize,
    backing: Backing,
) -> anyhow::Result<EchoServer> {
    let tls = tokio_rustls::TlsAcceptor::from(store.server_config()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name(THREAD_NAME)
        .enable_all()
        .build()
        .context("starting the echo server's runtime")?;
    let listener = runtime
        .spawn(async { TcpListener::bind("127.0.0.1:0").await })
        .await
        .context("binding the echo port")??;
    let addr = listener.local_addr()?;
    if let Backing::Audit(pool) = &backing {
        runtime.spawn(
            carehub_platform::audit::sequencer::Sequencer {
                service: "loadgen",
                pool: pool.clone(),
                batch: carehub_platform::audit::sequencer::DEFAULT_BATCH,
                interval: Duration::from_millis(50),
                metrics: None,
            }
            .run(),
        );
    }
    runtime.spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<EchoConn>(64);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
                    {
                        let _ = tx.send(EchoConn(stream)).await;
                    }
                });
            }
        });
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|conn| (Ok::<_, std::io::Error>(conn), rx))
        });
        // The same HTTP/2 settings as the platform's server.
        let _ = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .serve_with_incoming(
                EchoService {
                    backing,
                    reads: Arc::new(AtomicU64::new(0)),
                },
                incoming,
            )
            .await;
    });
    Ok(EchoServer {
        addr,
        runtime: Some(runtime),
    })
}

/// The echo call over `channels` (round robin by `seq`), `payload_bytes` each way.
pub fn op(channels: Vec<Channel>, payload_bytes: usize) -> Op {
    let channels = Arc::new(channels);
    let payload = EchoMessage {
        payload: vec![0x5a; payload_bytes],
    };
    Arc::new(move |seq| -> OpFuture {
        let channel = channels[(seq as usize) % channels.len()].clone();
        let msg = payload.clone();
        Box::pin(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec: tonic_prost::ProstCodec<EchoMessage, EchoMessage> =
                tonic_prost::ProstCodec::default();
            grpc.unary(
                tonic::Request::new(msg),
                http::uri::PathAndQuery::from_static(PATH),
                codec,
            )
            .await
            .map(|_| ())
        })
    })
}

//! `test.Audited/Touch`: a mutating RPC that inserts a row and records its audit event in the
//! same transaction, answering the event's sequence number. Its table: [`create_table`].

use std::convert::Infallible;
use std::task::{Context, Poll};

use carehub_platform::audit::{self, Action, AuditEvent, Purpose};
use carehub_platform::auth::Caller;
use futures::future::BoxFuture;
use tonic::body::Body;
use uuid::Uuid;

pub const PATH: &str = "/test.Audited/Touch";

pub async fn create_table(pool: &sqlx::PgPool) {
    sqlx::query("CREATE TABLE touches (id uuid PRIMARY KEY, subject uuid NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

#[derive(Clone)]
pub struct Audited {
    pub pool: sqlx::PgPool,
}

impl tonic::server::NamedService for Audited {
    const NAME: &'static str = "test.Audited";
}

struct Touch(sqlx::PgPool);

impl tonic::server::UnaryService<String> for Touch {
    type Response = String;
    type Future = BoxFuture<'static, Result<tonic::Response<String>, tonic::Status>>;

    /// The request is the subject (patient) id.
    fn call(&mut self, request: tonic::Request<String>) -> Self::Future {
        let pool = self.0.clone();
        Box::pin(async move {
            let caller = request.extensions().get::<Caller>().cloned();
            let subject = Uuid::parse_str(request.get_ref())
                .map_err(|_| tonic::Status::invalid_argument("subject"))?;
            let id = Uuid::now_v7();
            let mut tx = pool
                .begin()
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            sqlx::query("INSERT INTO touches VALUES ($1, $2)")
                .bind(id)
                .bind(subject)
                .execute(&mut *tx)
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let mut event = AuditEvent::new(
                "test.touch",
                Action::Create,
                Purpose::Treatment,
                "touch",
                id,
            )
            .subject(subject);
            if let Some(caller) = &caller {
                event = event.caller(caller);
            }
            audit::record(&mut tx, &event).await?;
            tx.commit()
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            // Sealed before answering, so that the caller can tell the event's place.
            audit::seal_all(&pool).await?;
            let seq: i64 = sqlx::query_scalar(
                "SELECT seq FROM carehub_platform.audit_events WHERE event_id = $1",
            )
            .bind(event.event_id)
            .fetch_one(&pool)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
            Ok(tonic::Response::new(seq.to_string()))
        })
    }
}

impl tower::Service<http::Request<Body>> for Audited {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<String, String>::default());
            Ok(grpc.unary(Touch(pool), req).await)
        })
    }
}

/// Calls `test.Audited/Touch` for `subject`; answers the audit sequence number.
pub async fn touch<T>(channel: T, subject: Uuid) -> Result<i64, tonic::Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = prost::bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
    let mut request = tonic::Request::new(subject.to_string());
    request
        .metadata_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    request.metadata_mut().insert(
        "x-forwarded-user-agent",
        "carehub-test/1.0".parse().unwrap(),
    );
    let response = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(PATH),
            tonic_prost::ProstCodec::<String, String>::default(),
        )
        .await?;
    response
        .into_inner()
        .parse()
        .map_err(|_| tonic::Status::internal("not a sequence number"))
}

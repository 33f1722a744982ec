#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ListSessions' page tokens are bound to the user they were issued to: another user sending
//! one is refused with INVALID_ARGUMENT on `page.page_token`, never shown a page of theirs from
//! that position; an edited token is refused as such.

use crate::common;

use crate::common::{assert_status, PASSWORD};
use carehub_platform::paging::TokenError;
use carehub_proto::common::v1::PageRequest;
use carehub_proto::identity::v1::*;
use tonic::Code;

fn page(token: &str) -> ListSessionsRequest {
    ListSessionsRequest {
        page: Some(PageRequest {
            page_size: 1,
            page_token: token.to_owned(),
        }),
    }
}

fn description(status: &tonic::Status) -> String {
    let d = carehub_platform::errors::details_of(status);
    assert_eq!(d.field_violations.len(), 1, "{status:?}");
    d.field_violations[0].1.clone()
}

#[tokio::test]
async fn a_page_token_continues_only_its_own_users_listing() {
    let app = common::spawn().await;
    app.register_patient("ida@example.org", PASSWORD).await;
    app.register_patient("jon@example.org", PASSWORD).await;
    let ida = app.login("ida@example.org", PASSWORD).await;
    app.login("ida@example.org", PASSWORD).await;
    let jon = app.login("jon@example.org", PASSWORD).await;
    app.login("jon@example.org", PASSWORD).await;
    let mut client = app.public("gateway").await;

    let first = client
        .list_sessions(app.with_token(page(""), &ida.access_token))
        .await
        .unwrap()
        .into_inner();
    let token = first.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    // Ida continues with it.
    let second = client
        .list_sessions(app.with_token(page(&token), &ida.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.sessions.len(), 1);

    // Jon does not.
    let e = client
        .list_sessions(app.with_token(page(&token), &jon.access_token))
        .await
        .unwrap_err();
    let fields = assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    assert_eq!(fields, ["page.page_token"]);
    assert_eq!(description(&e), TokenError::OtherFilter.to_string());

    // An edited token is refused as altered, not read as another position.
    let mut edited = token.into_bytes();
    let last = edited.len() - 2;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    let e = client
        .list_sessions(app.with_token(page(&edited), &ida.access_token))
        .await
        .unwrap_err();
    assert_status(&e, Code::InvalidArgument, Some("INVALID_FIELD"));
    assert_eq!(description(&e), TokenError::Altered.to_string());
    app.shutdown().await;
}

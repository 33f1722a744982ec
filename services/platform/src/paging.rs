//! The one page-token format of every `ListX` RPC (DESIGN.md §4a): `page_size` defaults to 50
//! and is capped at 500; `page_token` is opaque to clients, versioned, and bound to the
//! request's filter.
//!
//! A token is base64url (no padding) of
//!
//! ```text
//! version (1 byte) | filter tag (8) | cursor (the last item's sort key) | check (8)
//! ```
//!
//! - the filter tag is SHA-256 over the fields that select the items ([`Filter`]): a token
//!   sent with other filters would position the listing in another result set, so it is
//!   refused, not silently misread;
//! - the check is SHA-256 over everything before it, so a corrupted or edited token is
//!   refused rather than taken as another position;
//! - the version lets a later cursor layout refuse older tokens with a clear message.
//!
//! Neither hash is keyed, on purpose: a token grants nothing. Every request authorizes its
//! filter itself, and a crafted cursor can only move within what that filter already allows.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use carehub_proto::common::v1::PageRequest;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::errors::FieldViolations;

/// `page_size` when the request leaves it 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// The largest page served; larger requests get this many.
pub const MAX_PAGE_SIZE: i64 = 500;
/// The layout of tokens issued now.
pub const VERSION: u8 = 1;
/// Longer tokens are refused before decoding (no cursor comes near it).
const MAX_TOKEN_LEN: usize = 512;
const TAG_LEN: usize = 8;
const CHECK_LEN: usize = 8;
/// Separates the check's input from every other SHA-256 use.
const CHECK_DOMAIN: &[u8] = b"carehub.page_token.v1";

/// The request fields that select the items, in a fixed order: a token only continues a
/// listing with the same ones. Give each field, set or not (absent fields as `None`).
#[derive(Clone)]
pub struct Filter {
    hash: Sha256,
}

impl Filter {
    /// `listing` names the RPC, so that two listings with equal filters do not share tokens.
    pub fn new(listing: &str) -> Self {
        let mut f = Self {
            hash: Sha256::new(),
        };
        f.put(listing.as_bytes());
        f
    }

    /// Adds a field; `None` and every value are told apart (length-prefixed).
    pub fn field(mut self, name: &str, value: Option<&[u8]>) -> Self {
        self.put(name.as_bytes());
        match value {
            None => self.hash.update([0u8]),
            Some(v) => {
                self.hash.update([1u8]);
                self.put(v);
            }
        }
        self
    }

    fn put(&mut self, bytes: &[u8]) {
        self.hash.update((bytes.len() as u64).to_be_bytes());
        self.hash.update(bytes);
    }

    fn tag(&self) -> [u8; TAG_LEN] {
        let digest = self.hash.clone().finalize();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&digest[..TAG_LEN]);
        tag
    }
}

/// One component of a cursor.
pub trait Part: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(input: &mut &[u8]) -> Option<Self>;
}

fn take_n<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    Some(*head)
}

impl Part for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        match take_n::<1>(input)? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

impl Part for i64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        Some(i64::from_be_bytes(take_n(input)?))
    }
}

/// Microsecond precision: what Postgres keeps.
impl Part for DateTime<Utc> {
    fn put(&self, out: &mut Vec<u8>) {
        self.timestamp_micros().put(out);
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        DateTime::from_timestamp_micros(i64::take(input)?)
    }
}

impl Part for Uuid {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        Some(Uuid::from_bytes(take_n(input)?))
    }
}

/// The sort key of the last item of a page, after which the next page starts.
pub trait Cursor: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(input: &mut &[u8]) -> Option<Self>;
}

impl<A: Part, B: Part> Cursor for (A, B) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        Some((A::take(input)?, B::take(input)?))
    }
}

impl<A: Part, B: Part, C: Part> Cursor for (A, B, C) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
        self.2.put(out);
    }
    fn take(input: &mut &[u8]) -> Option<Self> {
        Some((A::take(input)?, B::take(input)?, C::take(input)?))
    }
}

/// Why a page token is refused; the text is the field violation's description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("is not a page token from a previous response")]
    Malformed,
    #[error("was issued by another version of this service; list again from the first page")]
    Version,
    #[error("has been altered; send it back exactly as it was received")]
    Altered,
    #[error(
        "was issued for a request with other filters; repeat those filters, or list again from the first page"
    )]
    OtherFilter,
}

/// The token that continues a listing after `cursor`.
pub fn encode<C: Cursor>(filter: &Filter, cursor: &C) -> String {
    let mut raw = vec![VERSION];
    raw.extend_from_slice(&filter.tag());
    cursor.put(&mut raw);
    let check = check_of(&raw);
    raw.extend_from_slice(&check);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The cursor of a token issued by [`encode`] with the same filter.
pub fn decode<C: Cursor>(filter: &Filter, token: &str) -> Result<C, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Malformed)?;
    let Some((&version, _)) = raw.split_first() else {
        return Err(TokenError::Malformed);
    };
    if version != VERSION {
        return Err(TokenError::Version);
    }
    if raw.len() < 1 + TAG_LEN + CHECK_LEN {
        return Err(TokenError::Malformed);
    }
    let (body, check) = raw.split_at(raw.len() - CHECK_LEN);
    if check_of(body) != check {
        return Err(TokenError::Altered);
    }
    let (tag, mut cursor) = body[1..].split_at(TAG_LEN);
    if tag != filter.tag() {
        return Err(TokenError::OtherFilter);
    }
    match C::take(&mut cursor) {
        Some(c) if cursor.is_empty() => Ok(c),
        // It passed the check, so this service wrote it, with another cursor layout.
        _ => Err(TokenError::Version),
    }
}

fn check_of(body: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(CHECK_DOMAIN)
        .chain_update(body)
        .finalize();
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(&digest[..CHECK_LEN]);
    check
}

/// A checked `PageRequest`: how many items to return and where to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<C> {
    /// Items to return (1..=500); query one more to know whether another page follows.
    pub size: i64,
    /// Start after this item; `None` for the first page.
    pub after: Option<C>,
}

impl<C: Cursor> Page<C> {
    /// Reads `page` (the request's `PageRequest`, at field `field`, e.g. `"page"`): a negative
    /// size or a refused token is added to `v` as a violation of `<field>.page_size` or
    /// `<field>.page_token`.
    pub fn read(
        page: Option<&PageRequest>,
        filter: &Filter,
        field: &str,
        v: &mut FieldViolations,
    ) -> Self {
        let Some(p) = page else {
            return Self {
                size: DEFAULT_PAGE_SIZE,
                after: None,
            };
        };
        let size = match i64::from(p.page_size) {
            n if n < 0 => {
                v.add(&format!("{field}.page_size"), "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if p.page_token.is_empty() {
            None
        } else {
            match decode(filter, &p.page_token) {
                Ok(c) => Some(c),
                Err(e) => {
                    v.add(&format!("{field}.page_token"), e.to_string());
                    None
                }
            }
        };
        Self { size, after }
    }

    /// How many rows to fetch: one more than the page, to know whether another follows.
    pub fn fetch(&self) -> i64 {
        self.size + 1
    }

    /// Cuts `rows` (fetched with [`Page::fetch`]) to the page and returns the next page's
    /// token, empty when this page is the last.
    pub fn finish<T>(
        &self,
        rows: &mut Vec<T>,
        filter: &Filter,
        cursor: impl Fn(&T) -> C,
    ) -> String {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        let more = rows.len() > size;
        rows.truncate(size);
        match rows.last() {
            Some(last) if more => encode(filter, &cursor(last)),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    type Key = (bool, DateTime<Utc>, Uuid);

    fn filter(user: &str) -> Filter {
        Filter::new("test.List").field("user_id", Some(user.as_bytes()))
    }

    fn key() -> Key {
        (
            true,
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        )
    }

    fn raw(token: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(token).unwrap()
    }

    #[test]
    fn a_token_round_trips_with_its_filter() {
        let t = encode(&filter("a"), &key());
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode::<Key>(&filter("a"), &t), Ok(key()));
        let pair = (DateTime::from_timestamp_micros(-5).unwrap(), i64::MAX);
        assert_eq!(decode(&filter("a"), &encode(&filter("a"), &pair)), Ok(pair));
    }

    #[test]
    fn another_filter_is_refused() {
        let t = encode(&filter("a"), &key());
        assert_eq!(
            decode::<Key>(&filter("b"), &t),
            Err(TokenError::OtherFilter)
        );
        // Absent and empty are different filters, and so are two listings.
        let absent = Filter::new("test.List").field("user_id", None);
        let empty = Filter::new("test.List").field("user_id", Some(b""));
        let t = encode(&absent, &key());
        assert_eq!(decode::<Key>(&empty, &t), Err(TokenError::OtherFilter));
        let other = Filter::new("test.Other").field("user_id", None);
        assert_eq!(decode::<Key>(&other, &t), Err(TokenError::OtherFilter));
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let f1 = Filter::new("l").field("ab", Some(b"c"));
        let f2 = Filter::new("l").field("a", Some(b"bc"));
        assert_eq!(
            decode::<Key>(&f2, &encode(&f1, &key())),
            Err(TokenError::OtherFilter)
        );
    }

    #[test]
    fn another_version_is_refused() {
        let mut bytes = raw(&encode(&filter("a"), &key()));
        bytes[0] = VERSION + 1;
        let t = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(decode::<Key>(&filter("a"), &t), Err(TokenError::Version));
        // A valid token of another cursor layout (a pair where a triple is read).
        let pair = encode(&filter("a"), &(DateTime::<Utc>::UNIX_EPOCH, 7i64));
        assert_eq!(decode::<Key>(&filter("a"), &pair), Err(TokenError::Version));
    }

    #[test]
    fn an_altered_token_is_refused() {
        let good = raw(&encode(&filter("a"), &key()));
        for i in 1..good.len() {
            let mut bytes = good.clone();
            bytes[i] ^= 0x01;
            let t = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                decode::<Key>(&filter("a"), &t),
                Err(TokenError::Altered),
                "byte {i}"
            );
        }
        let cut = URL_SAFE_NO_PAD.encode(&good[..good.len() - 1]);
        assert_eq!(decode::<Key>(&filter("a"), &cut), Err(TokenError::Altered));
    }

    #[test]
    fn garbage_is_malformed() {
        for t in ["garbage!", "", "AQ", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert_eq!(
                decode::<Key>(&filter("a"), t),
                Err(TokenError::Malformed),
                "{t:?}"
            );
        }
    }

    #[test]
    fn page_requests_default_cap_and_name_their_fields() {
        let f = filter("a");
        let mut v = FieldViolations::new();
        let page = Page::<Key>::read(None, &f, "page", &mut v);
        assert_eq!((page.size, page.after), (DEFAULT_PAGE_SIZE, None));
        let req = |size: i32, token: &str| PageRequest {
            page_size: size,
            page_token: token.to_owned(),
        };
        let page = Page::<Key>::read(Some(&req(0, "")), &f, "page", &mut v);
        assert_eq!(page.size, 50);
        let page = Page::<Key>::read(Some(&req(10_000, "")), &f, "page", &mut v);
        assert_eq!(page.size, 500);
        assert!(v.is_empty());
        let t = encode(&f, &key());
        let page = Page::<Key>::read(Some(&req(2, &t)), &f, "page", &mut v);
        assert_eq!((page.size, page.after), (2, Some(key())));
        assert!(v.is_empty());

        let other = encode(&filter("b"), &key());
        Page::<Key>::read(Some(&req(-1, &other)), &f, "page", &mut v);
        let status = v.into_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = crate::errors::details_of(&status);
        assert_eq!(details.reason.as_deref(), Some("INVALID_FIELD"));
        assert_eq!(
            details.field_violations,
            vec![
                (
                    "page.page_size".to_owned(),
                    "must not be negative".to_owned()
                ),
                (
                    "page.page_token".to_owned(),
                    TokenError::OtherFilter.to_string()
                ),
            ]
        );
    }

    #[test]
    fn finish_cuts_the_page_and_tokens_the_last_item() {
        let f = filter("a");
        let page = Page::<(i64, i64)> {
            size: 2,
            after: None,
        };
        let mut rows = vec![1i64, 2, 3];
        let next = page.finish(&mut rows, &f, |r| (*r, 0));
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode::<(i64, i64)>(&f, &next), Ok((2, 0)));
        let mut last = vec![4i64, 5];
        assert_eq!(page.finish(&mut last, &f, |r| (*r, 0)), "");
        assert_eq!(last, [4, 5]);
    }
}

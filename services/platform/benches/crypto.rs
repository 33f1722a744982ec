#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Envelope encryption of a 1 KiB field with cached keys, next to raw AES-256-GCM on the same
//! data, so that the overhead ratio reads off directly (goal: envelope decrypt ≤ 2× raw).
//!
//! Needs PostgreSQL (DATABASE_URL, default the local one) only to create the data key once;
//! the measured loops run from the key cache. The reservation batch is raised so that the
//! encrypt loop never refills its use counter: with the default batch (256) one database round
//! trip is amortized over 256 encryptions on top of what is measured here.
//!
//! Run: `cargo bench -p carehub-platform --bench crypto`.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use carehub_platform::crypto::{CryptoConfig, Envelope, Field};
use carehub_platform::db::TestDatabase;
use carehub_platform::keys::{KeySource, StaticKeys};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand::RngCore;
use sqlx::migrate::Migrator;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn crypto(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _entered = rt.enter();
    let db = rt.block_on(TestDatabase::new(&NO_MIGRATIONS)).unwrap();
    let keys: Arc<dyn KeySource> = Arc::new(StaticKeys::generate());
    let env = Envelope::new(
        "bench",
        db.pool.clone(),
        keys,
        CryptoConfig {
            max_uses_per_key: 1 << 31,
            reservation_batch: 1 << 31,
            ..CryptoConfig::default()
        },
    )
    .unwrap();
    let field = Field::new(
        "notes",
        "body",
        "0192b1e4-7c7d-7000-8000-000000000001",
        "patient-1",
    );
    let data = vec![0x5au8; 1024];
    let ciphertext = rt.block_on(env.encrypt(&field, &data)).unwrap();
    assert_eq!(
        rt.block_on(env.decrypt(&field, &ciphertext))
            .unwrap()
            .as_slice(),
        &data[..]
    );
    let db_calls = env.counters().db_calls;

    let mut raw_key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw_key);
    let raw = Aes256Gcm::new_from_slice(&raw_key).unwrap();
    let mut raw_nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut raw_nonce);
    let raw_ciphertext = raw
        .encrypt(Nonce::from_slice(&raw_nonce), &data[..])
        .unwrap();

    let mut group = c.benchmark_group("crypto_1KiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("raw_aes256gcm_encrypt", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut nonce);
            raw.encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: black_box(&data[..]),
                    aad: b"",
                },
            )
            .unwrap()
        })
    });
    group.bench_function("envelope_encrypt", |b| {
        b.iter(|| {
            futures::executor::block_on(env.encrypt(black_box(&field), black_box(&data))).unwrap()
        })
    });
    group.bench_function("raw_aes256gcm_decrypt", |b| {
        b.iter(|| {
            raw.decrypt(
                Nonce::from_slice(&raw_nonce),
                Payload {
                    msg: black_box(&raw_ciphertext[..]),
                    aad: b"",
                },
            )
            .unwrap()
        })
    });
    group.bench_function("envelope_decrypt", |b| {
        b.iter(|| {
            futures::executor::block_on(env.decrypt(black_box(&field), black_box(&ciphertext)))
                .unwrap()
        })
    });
    group.finish();

    assert_eq!(
        env.counters().db_calls,
        db_calls,
        "the measured loops must not touch the database"
    );
    rt.block_on(db.drop_database()).unwrap();
}

criterion_group!(benches, crypto);
criterion_main!(benches);

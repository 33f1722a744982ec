#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Booking under concurrency: storms of clients after one provider's time, reschedules racing
//! bookings, holds racing holds; the exclusion constraints let exactly one win each instant and
//! a SQL check finds no overlap. Then the state machine, cancellation, idempotent retries.

use carehub_platform::auth::Role;
use carehub_platform::timestamps::to_proto;
use carehub_proto::scheduling::v1::*;
use chrono::Duration;
use tonic::Code;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_booking_overlapping_slots_leave_one_winner_per_instant() {
    let suite = spawn().await;
    let staff = suite.user(Role::Staff, "desk").await;
    let short = suite
        .visit_type(&staff, 30, 0, Modality::Telehealth, "")
        .await;
    let long = suite
        .visit_type(&staff, 60, 0, Modality::Telehealth, "")
        .await;
    let provider = suite
        .provider(&staff, "America/New_York", &[&short, &long], 8, 18)
        .await;
    let nine = local(NEW_YORK, 3, 9, 0);
    let half_past = nine + Duration::minutes(30);
    let mut patients = Vec::new();
    for i in 0..64 {
        patients.push(suite.user(Role::Patient, &format!("p{i}")).await);
    }
    // A third book 9:00-10:00, a third 9:00-9:30, a third 9:30-10:00: every request overlaps
    // another, and at most two can stand together (9:00 short + 9:30 short).
    let mut storm = Vec::new();
    for (i, p) in patients.iter().enumerate() {
        let (visit, start) = match i % 3 {
            0 => (&long, nine),
            1 => (&short, nine),
            _ => (&short, half_past),
        };
        let (suite, p, provider) = (&suite, p.clone(), provider.clone());
        storm.push(async move { suite.book(&p, &provider, visit, start).await });
    }
    let results = futures::future::join_all(storm).await;
    let won: Vec<&Appointment> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            assert_eq!(reason(s).as_deref(), Some("SLOT_TAKEN"), "{s:?}");
        }
    }
    // Either the long visit won 9:00-10:00 alone, or the two short ones split it.
    let mut starts: Vec<_> = won.iter().map(|a| a.start_time.unwrap().seconds).collect();
    starts.sort_unstable();
    assert!(
        (won.len() == 1 && won[0].visit_type_id == long.id)
            || (won.len() == 2 && starts == [nine.timestamp(), half_past.timestamp()]),
        "winners: {won:?}"
    );
    assert_eq!(
        suite.overlaps().await,
        0,
        "the database holds overlapping claims"
    );
    let booked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM appointments WHERE status = 'booked'")
            .fetch_one(suite.pool())
            .await
            .unwrap();
    assert_eq!(booked, i64::try_from(won.len()).unwrap());
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reschedules_racing_bookings_and_holds_racing_holds_leave_one_winner() {
    let suite = spawn().await;
    let (_staff, visit, provider) = suite.clinic().await;
    let ten = local(NEW_YORK, 4, 10, 0);
    let eleven = local(NEW_YORK, 4, 11, 0);
    for round in 0..4 {
        let day = Duration::days(round);
        let movers: Vec<User> = {
            let mut v = Vec::new();
            for i in 0..4 {
                v.push(suite.user(Role::Patient, &format!("m{round}{i}")).await);
            }
            v
        };
        // Four patients hold appointments at 10:00, 10:30, 12:00, 12:30 and all try to move to
        // 11:00 while twelve others try to book 11:00.
        let mut appointments = Vec::new();
        for (i, m) in movers.iter().enumerate() {
            let start = [
                ten,
                ten + Duration::minutes(30),
                ten + Duration::hours(2),
                ten + Duration::minutes(150),
            ][i] + day;
            appointments.push(suite.book(m, &provider, &visit, start).await.unwrap());
        }
        let mut bookers = Vec::new();
        for i in 0..12 {
            bookers.push(suite.user(Role::Patient, &format!("b{round}{i}")).await);
        }
        let target = eleven + day;
        let mut moves = Vec::new();
        for (m, a) in movers.iter().zip(&appointments) {
            let suite = &suite;
            moves.push(async move {
                suite
                    .public()
                    .await
                    .reschedule_appointment(as_user(
                        m,
                        RescheduleAppointmentRequest {
                            appointment_id: a.id.clone(),
                            start_time: Some(to_proto(target)),
                            hold_id: String::new(),
                        },
                    ))
                    .await
                    .map(tonic::Response::into_inner)
            });
        }
        let mut books = Vec::new();
        for b in &bookers {
            let (suite, provider, visit) = (&suite, &provider, &visit);
            books.push(async move { suite.book(b, provider, visit, target).await });
        }
        let (moved, booked) = futures::future::join(
            futures::future::join_all(moves),
            futures::future::join_all(books),
        )
        .await;
        let winners = moved.iter().filter(|r| r.is_ok()).count()
            + booked.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "exactly one takes 11:00 (round {round})");
        for s in moved
            .iter()
            .filter_map(|r| r.as_ref().err())
            .chain(booked.iter().filter_map(|r| r.as_ref().err()))
        {
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            assert_eq!(reason(s).as_deref(), Some("SLOT_TAKEN"), "{s:?}");
        }
        // A reschedule that lost changed nothing: its appointment is where it was.
        for (r, a) in moved.iter().zip(&appointments) {
            let now = suite
                .public()
                .await
                .get_appointment(as_user(
                    &provider,
                    GetAppointmentRequest {
                        appointment_id: a.id.clone(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            match r {
                Ok(m) => {
                    assert_eq!(now.start_time, Some(to_proto(target)));
                    assert_eq!(m.reschedule_count, 1);
                }
                Err(_) => assert_eq!(now.start_time, a.start_time, "a lost reschedule moved"),
            }
        }
        assert_eq!(suite.overlaps().await, 0);
    }

    // Sixteen holds on one slot: one is granted, the rest get SLOT_TAKEN.
    let slot = local(NEW_YORK, 9, 15, 0);
    let mut holders = Vec::new();
    for i in 0..16 {
        holders.push(suite.user(Role::Patient, &format!("h{i}")).await);
    }
    let holds = futures::future::join_all(holders.iter().map(|h| {
        let (suite, provider, visit) = (&suite, &provider, &visit);
        async move {
            suite
                .public()
                .await
                .create_hold(as_user(
                    h,
                    CreateHoldRequest {
                        provider_id: provider.id.clone(),
                        visit_type_id: visit.id.clone(),
                        start_time: Some(to_proto(slot)),
                        patient_id: String::new(),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    }))
    .await;
    let granted: Vec<(&User, &Hold)> = holders
        .iter()
        .zip(&holds)
        .filter_map(|(u, h)| h.as_ref().ok().map(|h| (u, h)))
        .collect();
    assert_eq!(granted.len(), 1, "{holds:?}");
    for s in holds.iter().filter_map(|h| h.as_ref().err()) {
        assert_eq!(reason(s).as_deref(), Some("SLOT_TAKEN"), "{s:?}");
    }
    // The hold keeps the slot from a direct booking ...
    let other = suite.user(Role::Patient, "late").await;
    let refused = suite
        .book(&other, &provider, &visit, slot)
        .await
        .unwrap_err();
    assert_eq!(reason(&refused).as_deref(), Some("SLOT_TAKEN"));
    // ... and from the search.
    let search = suite
        .public()
        .await
        .search_slots(as_user(
            &other,
            SearchSlotsRequest {
                start_time: Some(to_proto(slot - Duration::hours(1))),
                end_time: Some(to_proto(slot + Duration::hours(1))),
                visit_type_id: visit.id.clone(),
                time_zone: "America/New_York".into(),
                provider_ids: vec![provider.id.clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(search
        .slots
        .iter()
        .all(|s| s.start_time != Some(to_proto(slot))));
    assert_eq!(search.slots.len(), 3, "{:?}", search.slots);
    // Once it lapses, the slot is free again and booking from the lapsed hold is refused.
    let (holder, hold) = granted[0];
    sqlx::query(
        "UPDATE slot_claims SET hold_expires_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&hold.id)
    .execute(suite.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE holds SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&hold.id)
        .execute(suite.pool())
        .await
        .unwrap();
    let expired = suite
        .public()
        .await
        .book_appointment(as_user(
            holder,
            BookAppointmentRequest {
                hold_id: hold.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert_eq!(reason(&expired).as_deref(), Some("HOLD_EXPIRED"));
    suite.book(&other, &provider, &visit, slot).await.unwrap();
    assert_eq!(suite.overlaps().await, 0);
    suite.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_who_takes_no_new_patients_is_offered_only_to_their_own() {
    let suite = spawn().await;
    let (staff, visit, provider) = suite.clinic().await;
    let mut api = suite.public().await;
    let mut entry = api
        .get_provider(as_user(&staff, GetProviderRequest { provider_id: provider.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    entry.accepting_new_patients = false;
    api.put_provider(as_user(&staff, PutProviderRequest { provider: Some(entry) }))
        .await
        .unwrap();
    let patient = suite.user(Role::Patient, "new").await;
    let search = |who: User| {
        let (suite, visit, provider) = (&suite, &visit, &provider);
        async move {
            suite
                .public()
                .await
                .search_slots(as_user(
                    &who,
                    SearchSlotsRequest {
                        start_time: Some(to_proto(local(NEW_YORK, 2, 0, 0))),
                        end_time: Some(to_proto(local(NEW_YORK, 3, 0, 0))),
                        visit_type_id: visit.id.clone(),
                        state: "NY".into(),
                        time_zone: "America/New_York".into(),
                        provider_ids: vec![provider.id.clone()],
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .slots
                .len()
        }
    };
    assert_eq!(search(patient.clone()).await, 0);
    assert_eq!(search(staff.clone()).await, 20, "staff see the provider's whole day");
    let start = local(NEW_YORK, 2, 9, 0);
    let refused = suite.book(&patient, &provider, &visit, start).await.unwrap_err();
    assert_eq!(reason(&refused).as_deref(), Some("SLOT_UNAVAILABLE"));
    // Staff book the patient in; from then on the patient is one of the provider's own.
    api.book_appointment(as_user(
        &staff,
        BookAppointmentRequest {
            provider_id: provider.id.clone(),
            visit_type_id: visit.id.clone(),
            start_time: Some(to_proto(start)),
            patient_id: patient.id.clone(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(search(patient.clone()).await, 19);
    suite
        .book(&patient, &provider, &visit, start + Duration::hours(2))
        .await
        .unwrap();
    suite.shutdown().await;
}

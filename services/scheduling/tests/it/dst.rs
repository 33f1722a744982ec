#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Slots on daylight-saving transition days, through the service: providers in
//! America/New_York, Europe/Berlin and Australia/Lord_Howe (a 30-minute shift) available
//! 00:00-06:00 every day; the transition night's slots are searched and booked. No slot is
//! missing, doubled or shifted, in the provider's time or the patient's. (The rules
//! themselves are tested over every day of a year in `domain::slots`.)

use carehub_platform::auth::Role;
use carehub_platform::timestamps::to_proto;
use carehub_proto::scheduling::v1::*;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::common::*;

/// The provider's and the patient's local renderings of every slot `provider` offers on the
/// local `date` (provider's zone), for a patient in `patient_tz`.
async fn night(
    suite: &Suite,
    patient: &User,
    provider: &User,
    visit: &VisitType,
    tz: Tz,
    date: NaiveDate,
    patient_tz: &str,
) -> Vec<Slot> {
    let from = at(tz, date, 0, 0);
    let to = at(tz, date.succ_opt().unwrap(), 0, 0);
    let mut api = suite.public().await;
    let mut slots = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .search_slots(as_user(
                patient,
                SearchSlotsRequest {
                    start_time: Some(to_proto(from)),
                    end_time: Some(to_proto(to)),
                    visit_type_id: visit.id.clone(),
                    provider_ids: vec![provider.id.clone()],
                    time_zone: patient_tz.into(),
                    page: Some(carehub_proto::common::v1::PageRequest {
                        page_size: 4,
                        page_token: token,
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        slots.extend(page.slots);
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            return slots;
        }
    }
}

fn starts(slots: &[Slot]) -> Vec<DateTime<Utc>> {
    slots
        .iter()
        .map(|s| {
            let t = s.start_time.unwrap();
            DateTime::from_timestamp(t.seconds, 0).unwrap()
        })
        .collect()
}

fn provider_local(slots: &[Slot]) -> Vec<&str> {
    slots
        .iter()
        .map(|s| s.provider_local_start.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transition_nights_in_new_york_berlin_and_lord_howe_have_every_slot_once() {
    let suite = spawn().await;
    let staff = suite.user(Role::Staff, "desk").await;
    let visit = suite
        .visit_type(&staff, 30, 0, Modality::Telehealth, "")
        .await;
    let patient = suite.user(Role::Patient, "pat").await;
    let new_york = suite
        .provider(&staff, "America/New_York", &[&visit], 0, 6)
        .await;
    let berlin = suite
        .provider(&staff, "Europe/Berlin", &[&visit], 0, 6)
        .await;
    let lord_howe = suite
        .provider(&staff, "Australia/Lord_Howe", &[&visit], 0, 6)
        .await;
    let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();

    // New York, spring forward (02:00 EST -> 03:00 EDT): 02:00-02:59 do not exist.
    let ny = chrono_tz::America::New_York;
    let slots = night(
        &suite,
        &patient,
        &new_york,
        &visit,
        ny,
        day(2027, 3, 14),
        "Europe/Berlin",
    )
    .await;
    assert_eq!(
        provider_local(&slots),
        [
            "2027-03-14T00:00:00-05:00",
            "2027-03-14T00:30:00-05:00",
            "2027-03-14T01:00:00-05:00",
            "2027-03-14T01:30:00-05:00",
            "2027-03-14T03:00:00-04:00",
            "2027-03-14T03:30:00-04:00",
            "2027-03-14T04:00:00-04:00",
            "2027-03-14T04:30:00-04:00",
            "2027-03-14T05:00:00-04:00",
            "2027-03-14T05:30:00-04:00",
        ]
    );
    // The patient in Berlin (still on CET) sees them six, then five hours later.
    assert_eq!(slots[0].patient_local_start, "2027-03-14T06:00:00+01:00");
    assert_eq!(slots[4].patient_local_start, "2027-03-14T08:00:00+01:00");
    // Every step is 30 real minutes.
    let s = starts(&slots);
    assert!(
        s.windows(2).all(|w| w[1] - w[0] == Duration::minutes(30)),
        "{s:?}"
    );
    assert_eq!(
        s[3],
        "2027-03-14T06:30:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(
        s[4],
        "2027-03-14T07:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );

    // New York, fall back (02:00 EDT -> 01:00 EST): 01:00-01:59 happen twice, both offered.
    let slots = night(
        &suite,
        &patient,
        &new_york,
        &visit,
        ny,
        day(2027, 11, 7),
        "America/New_York",
    )
    .await;
    let local: Vec<&str> = provider_local(&slots).into_iter().take(8).collect();
    assert_eq!(
        local,
        [
            "2027-11-07T00:00:00-04:00",
            "2027-11-07T00:30:00-04:00",
            "2027-11-07T01:00:00-04:00",
            "2027-11-07T01:30:00-04:00",
            "2027-11-07T01:00:00-05:00",
            "2027-11-07T01:30:00-05:00",
            "2027-11-07T02:00:00-05:00",
            "2027-11-07T02:30:00-05:00",
        ]
    );
    assert_eq!(slots.len(), 14, "seven real hours");
    let s = starts(&slots);
    assert!(
        s.windows(2).all(|w| w[1] - w[0] == Duration::minutes(30)),
        "{s:?}"
    );

    // Berlin, spring forward (02:00 CET -> 03:00 CEST).
    let slots = night(
        &suite,
        &patient,
        &berlin,
        &visit,
        chrono_tz::Europe::Berlin,
        day(2027, 3, 28),
        "America/New_York",
    )
    .await;
    assert_eq!(slots.len(), 10);
    assert_eq!(slots[3].provider_local_start, "2027-03-28T01:30:00+01:00");
    assert_eq!(slots[4].provider_local_start, "2027-03-28T03:00:00+02:00");
    // New York moved two weeks earlier: EDT, six hours behind CEST.
    assert_eq!(slots[4].patient_local_start, "2027-03-27T21:00:00-04:00");

    // Lord Howe, DST ends (02:00 +11:00 -> 01:30 +10:30): 01:30-01:59 happen twice.
    let slots = night(
        &suite,
        &patient,
        &lord_howe,
        &visit,
        chrono_tz::Australia::Lord_Howe,
        day(2027, 4, 4),
        "America/New_York",
    )
    .await;
    assert_eq!(
        provider_local(&slots),
        [
            "2027-04-04T00:00:00+11:00",
            "2027-04-04T00:30:00+11:00",
            "2027-04-04T01:00:00+11:00",
            "2027-04-04T01:30:00+11:00",
            "2027-04-04T01:30:00+10:30",
            "2027-04-04T02:00:00+10:30",
            "2027-04-04T02:30:00+10:30",
            "2027-04-04T03:00:00+10:30",
            "2027-04-04T03:30:00+10:30",
            "2027-04-04T04:00:00+10:30",
            "2027-04-04T04:30:00+10:30",
            "2027-04-04T05:00:00+10:30",
            "2027-04-04T05:30:00+10:30",
        ]
    );
    assert_eq!(slots[0].patient_local_start, "2027-04-03T09:00:00-04:00");
    let s = starts(&slots);
    assert!(
        s.windows(2).all(|w| w[1] - w[0] == Duration::minutes(30)),
        "{s:?}"
    );

    // Lord Howe, DST starts (02:00 +10:30 -> 02:30 +11:00): 02:00-02:29 do not exist.
    let slots = night(
        &suite,
        &patient,
        &lord_howe,
        &visit,
        chrono_tz::Australia::Lord_Howe,
        day(2027, 10, 3),
        "UTC",
    )
    .await;
    let local = provider_local(&slots);
    assert_eq!(
        &local[3..6],
        [
            "2027-10-03T01:30:00+10:30",
            "2027-10-03T02:30:00+11:00",
            "2027-10-03T03:00:00+11:00"
        ]
    );
    assert_eq!(slots.len(), 11, "five and a half real hours");
    assert_eq!(slots[4].patient_local_start, "2027-10-02T15:30:00+00:00");

    // A slot just after the gap books at the right instant, and the search no longer offers it.
    let after_gap = s_of(
        &night(
            &suite,
            &patient,
            &new_york,
            &visit,
            ny,
            day(2027, 3, 14),
            "UTC",
        )
        .await,
        4,
    );
    let booked = suite
        .book(&patient, &new_york, &visit, after_gap)
        .await
        .unwrap();
    assert_eq!(
        booked.start_time,
        Some(to_proto("2027-03-14T07:00:00Z".parse().unwrap()))
    );
    let again = night(
        &suite,
        &patient,
        &new_york,
        &visit,
        ny,
        day(2027, 3, 14),
        "UTC",
    )
    .await;
    assert_eq!(again.len(), 9);
    assert!(again
        .iter()
        .all(|s| s.provider_local_start != "2027-03-14T03:00:00-04:00"));
    suite.shutdown().await;
}

fn s_of(slots: &[Slot], i: usize) -> DateTime<Utc> {
    starts(slots)[i]
}

/// Pages of any size, across providers in three zones and day boundaries, list exactly what one
/// large page lists, in (start, provider) order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pages_across_days_and_zones_add_up_to_one_large_page() {
    let suite = spawn().await;
    let staff = suite.user(Role::Staff, "desk").await;
    let visit = suite
        .visit_type(&staff, 45, 15, Modality::Telehealth, "")
        .await;
    let patient = suite.user(Role::Patient, "pat").await;
    let mut providers = Vec::new();
    for tz in ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"] {
        providers.push(suite.provider(&staff, tz, &[&visit], 7, 19).await.id);
    }
    let from = Utc::now() + Duration::days(1);
    let search = |size: i32, token: String| SearchSlotsRequest {
        start_time: Some(to_proto(from)),
        end_time: Some(to_proto(from + Duration::days(4))),
        visit_type_id: visit.id.clone(),
        provider_ids: providers.clone(),
        time_zone: "America/Los_Angeles".into(),
        page: Some(carehub_proto::common::v1::PageRequest {
            page_size: size,
            page_token: token,
        }),
        ..Default::default()
    };
    let mut api = suite.public().await;
    let all = api
        .search_slots(as_user(&patient, search(500, String::new())))
        .await
        .unwrap()
        .into_inner();
    assert!(all.page.unwrap().next_page_token.is_empty());
    // Four days of three providers' twelve-hour days, an hour per slot.
    assert!(
        (140..=150).contains(&all.slots.len()),
        "{}",
        all.slots.len()
    );
    let key = |s: &Slot| (s.start_time.unwrap().seconds, s.provider_id.clone());
    assert!(all.slots.windows(2).all(|w| key(&w[0]) < key(&w[1])));
    for size in [1, 7, 50] {
        let mut paged = Vec::new();
        let mut token = String::new();
        loop {
            let page = api
                .search_slots(as_user(&patient, search(size, token)))
                .await
                .unwrap()
                .into_inner();
            assert!(page.slots.len() <= usize::try_from(size).unwrap());
            paged.extend(page.slots);
            token = page.page.unwrap().next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(paged, all.slots, "pages of {size}");
    }
    suite.shutdown().await;
}

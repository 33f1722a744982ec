//! De-identified aggregates: counts by condition, age band and state, with no identifier, no
//! count from 1 to 10, and no row or column with exactly one suppressed member, so that no
//! suppressed count follows from the published totals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use carehub_platform::auth::Role;
use carehub_proto::common::v1::Date;
use carehub_proto::records::v1::*;

use crate::common::{self, as_user, coding, diabetes, User};

fn condition(code: &str) -> EntryContent {
    EntryContent {
        content: Some(entry_content::Content::Condition(Condition {
            code: coding("http://hl7.org/fhir/sid/icd-10-cm", code, "a condition"),
            clinical_status: ConditionStatus::Active as i32,
            onset_date: None,
            note: String::new(),
        })),
    }
}

#[tokio::test]
async fn aggregates_show_no_identifier_and_no_small_or_recoverable_count() {
    let suite = common::spawn().await;
    let admin = suite.user(Role::Admin, "root").await;
    let mut c = suite.public().await;
    // 14 patients in California: 12 aged 40-ish with diabetes, 2 aged 70-ish with diabetes and
    // hypertension (each a small cell).
    let mut patients: Vec<User> = Vec::new();
    for i in 0..14 {
        let p = suite.user(Role::Patient, &format!("p{i}")).await;
        let year = if i < 12 { 1985 } else { 1955 };
        c.update_demographics(as_user(
            &p,
            UpdateDemographicsRequest {
                demographics: Some(Demographics {
                    patient_id: p.id.clone(),
                    birth_date: Some(Date {
                        year,
                        month: 6,
                        day: 1,
                    }),
                    state: "CA".into(),
                    zip: "94110".into(),
                }),
            },
        ))
        .await
        .unwrap();
        let mut contents = vec![diabetes()];
        if i >= 12 {
            contents.push(condition("I10"));
        }
        for content in contents {
            c.create_entry(as_user(
                &p,
                CreateEntryRequest {
                    patient_id: p.id.clone(),
                    content: Some(content),
                    labels: vec![],
                },
            ))
            .await
            .unwrap();
        }
        patients.push(p);
    }
    let e = c
        .get_condition_aggregates(as_user(&patients[0], GetConditionAggregatesRequest {}))
        .await
        .unwrap_err();
    common::assert_status(&e, tonic::Code::PermissionDenied, Some("ROLE_NOT_ALLOWED"));
    let agg = c
        .get_condition_aggregates(as_user(&admin, GetConditionAggregatesRequest {}))
        .await
        .unwrap()
        .into_inner();

    // No identifier of any kind: no user id, no ZIP, no birth date.
    let text = format!("{agg:?}");
    for p in &patients {
        assert!(!text.contains(&p.id), "a patient id in the aggregates");
    }
    assert!(!text.contains("94110") && !text.contains("1985") && !text.contains("1955"));

    assert_eq!(agg.tables.len(), 1);
    let t = &agg.tables[0];
    assert_eq!(t.state, "CA");
    let conditions: Vec<&str> = t.rows.iter().map(|r| r.condition.as_str()).collect();
    assert_eq!(conditions, vec!["ICD-10-CM E11", "ICD-10-CM I10"]);
    // The grid with its totals row: every published count is 0 or at least 11 ...
    let mut grid: Vec<Vec<Option<u64>>> = t
        .rows
        .iter()
        .chain(t.totals.iter())
        .map(|r| r.cells.iter().map(|c| c.count).collect())
        .collect();
    for row in &grid {
        for n in row.iter().flatten() {
            assert!(*n == 0 || *n > 10, "a count of {n} is published");
        }
    }
    // ... the grand total of 16 patient-conditions is there (in so small a table most other
    // counts hide each other: 2 = 14 - 12 would give a small cell away) ...
    let cols = grid[0].len();
    assert_eq!(grid[2][cols - 1], Some(16), "{grid:?}");
    // ... and no row or column has exactly one suppressed member.
    for row in &grid {
        assert_ne!(row.iter().filter(|c| c.is_none()).count(), 1, "{grid:?}");
    }
    for col in 0..cols {
        assert_ne!(
            grid.iter().filter(|r| r[col].is_none()).count(),
            1,
            "{grid:?}"
        );
    }
    // The two 65-89 cells (2 and 2) are hidden.
    grid.truncate(2);
    assert_eq!((grid[0][4], grid[1][4]), (None, None));
    suite.shutdown().await;
}

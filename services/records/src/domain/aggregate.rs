//! De-identified aggregates (HIPAA Safe Harbor): counts of patients by condition, age band and
//! state, with no date finer than the year (ages from the birth year; 90 and over one band), no
//! identifier, and small cells suppressed — with complementary suppression, so that no
//! suppressed count can be recovered by subtracting published counts from a published total.
//!
//! A table is a grid of counts with a totals column and a totals row: every row of the grid
//! (its cells and its total) and every column (its cells and its total) is one sum. A count
//! can be recovered from a sum exactly when it is the only suppressed member of it, so the
//! rule is: no published count is from 1 to 10, and no row or column has exactly one
//! suppressed member.

/// Counts from 1 to this are never published.
pub const SMALL: u64 = 10;

/// The age bands, as published.
pub const AGE_BANDS: [&str; 6] = ["0-17", "18-29", "30-44", "45-64", "65-89", "90+"];

/// The band of an age in whole years (from the birth year only).
pub fn age_band(age: i32) -> usize {
    match age {
        i32::MIN..=17 => 0,
        18..=29 => 1,
        30..=44 => 2,
        45..=64 => 3,
        65..=89 => 4,
        _ => 5,
    }
}

/// A grid with its totals: `cells[r][c]` for the rows, then the column totals as the last
/// row; each row's last value is its total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub counts: Vec<Vec<u64>>,
    pub suppressed: Vec<Vec<bool>>,
}

impl Table {
    /// `cells` (rows × columns) with the totals added, and the suppression applied.
    pub fn suppressed_from(cells: &[Vec<u64>]) -> Table {
        let cols = cells.first().map_or(0, Vec::len);
        let mut counts: Vec<Vec<u64>> = cells
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.push(r.iter().sum());
                r
            })
            .collect();
        let totals: Vec<u64> = (0..=cols)
            .map(|c| counts.iter().map(|r| r[c]).sum())
            .collect();
        counts.push(totals);
        let mut suppressed: Vec<Vec<bool>> = counts
            .iter()
            .map(|r| r.iter().map(|n| (1..=SMALL).contains(n)).collect())
            .collect();
        // Complementary suppression, until every line has zero or at least two suppressed.
        loop {
            let mut changed = false;
            for line in lines(counts.len(), cols + 1) {
                let hidden = line.iter().filter(|(r, c)| suppressed[*r][*c]).count();
                if hidden == 1 {
                    if let Some((r, c)) = partner(&counts, &suppressed, &line) {
                        suppressed[r][c] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        Table { counts, suppressed }
    }

    /// The published value of a position: `None` when suppressed.
    pub fn published(&self, r: usize, c: usize) -> Option<u64> {
        (!self.suppressed[r][c]).then_some(self.counts[r][c])
    }
}

/// Every row and every column of a `rows` × `cols` grid (totals included), as positions.
fn lines(rows: usize, cols: usize) -> Vec<Vec<(usize, usize)>> {
    let mut out: Vec<Vec<(usize, usize)>> = (0..rows)
        .map(|r| (0..cols).map(|c| (r, c)).collect())
        .collect();
    out.extend((0..cols).map(|c| (0..rows).map(|r| (r, c)).collect()));
    out
}

/// The member of `line` to suppress beside its one suppressed member: the smallest count
/// still published, a cell before a total, a non-zero count before a zero.
fn partner(
    counts: &[Vec<u64>],
    suppressed: &[Vec<bool>],
    line: &[(usize, usize)],
) -> Option<(usize, usize)> {
    let last_row = counts.len() - 1;
    let last_col = counts.first().map_or(0, |r| r.len() - 1);
    line.iter()
        .copied()
        .filter(|(r, c)| !suppressed[*r][*c])
        .min_by_key(|(r, c)| {
            let is_total = *r == last_row || *c == last_col;
            (is_total, counts[*r][*c] == 0, counts[*r][*c])
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The guarantee, checked on the published table: no count of 1 to 10 shows, and no row
    /// or column has exactly one hidden member (so subtraction recovers nothing).
    fn assert_safe(t: &Table) {
        let (rows, cols) = (t.counts.len(), t.counts[0].len());
        for r in 0..rows {
            for c in 0..cols {
                if let Some(n) = t.published(r, c) {
                    assert!(!(1..=SMALL).contains(&n), "a count of {n} shows at {r},{c}");
                }
            }
        }
        for line in lines(rows, cols) {
            let hidden = line.iter().filter(|(r, c)| t.suppressed[*r][*c]).count();
            assert_ne!(hidden, 1, "line {line:?} has one hidden member: {t:?}");
        }
    }

    #[test]
    fn a_lone_small_cell_takes_a_partner_in_its_row_and_its_column() {
        let cells = vec![vec![50, 3, 40], vec![30, 25, 60], vec![45, 70, 20]];
        let t = Table::suppressed_from(&cells);
        assert_safe(&t);
        assert!(t.suppressed[0][1]);
        // Without the partners, 3 = row total - 50 - 40.
        assert!(t.suppressed[0].iter().filter(|s| **s).count() >= 2);
        assert!((0..4).filter(|r| t.suppressed[*r][1]).count() >= 2);
        // Large totals stay published.
        assert_eq!(t.published(3, 3), Some(cells.iter().flatten().sum()));
    }

    #[test]
    fn tables_of_every_shape_and_mix_are_safe() {
        // A deterministic spread of counts, small and large, over many shapes.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for rows in 1..6 {
            for cols in 1..6 {
                for _ in 0..20 {
                    let cells: Vec<Vec<u64>> = (0..rows)
                        .map(|_| {
                            (0..cols)
                                .map(|_| [0, 1, 4, 9, 12, 30, 200][(next() % 7) as usize])
                                .collect()
                        })
                        .collect();
                    assert_safe(&Table::suppressed_from(&cells));
                }
            }
        }
    }

    #[test]
    fn ages_are_banded_with_ninety_and_over_as_one() {
        assert_eq!(
            [5, 18, 44, 45, 89, 90, 104].map(age_band),
            [0, 1, 2, 3, 4, 5, 5]
        );
    }
}

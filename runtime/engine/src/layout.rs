//! Column-blocked weights: a matrix `[rows, cols]` stored as consecutive blocks of columns,
//! each block row-major `[rows, width]`. A product that reads only the columns of one block
//! (a shared block's hidden-half or embedding-half input product, after
//! `hoist-shared-input`) then streams contiguous rows instead of a strided window of each
//! row.

/// Checks that `blocks` tile the columns of a `shape` matrix.
pub fn check(shape: &[usize], blocks: &[usize]) -> Result<(), String> {
    let [_, cols] = shape else {
        return Err(format!("column blocks need a matrix, not shape {shape:?}"));
    };
    if blocks.is_empty() || blocks.contains(&0) {
        return Err(format!("column blocks {blocks:?} must be positive widths"));
    }
    let total = blocks.iter().try_fold(0usize, |a, &b| a.checked_add(b));
    if total != Some(*cols) {
        return Err(format!(
            "column blocks {blocks:?} do not add up to the {cols} columns of shape {shape:?}"
        ));
    }
    Ok(())
}

/// The elements of row-major `data [rows, Σ blocks]` in column-blocked order; `None` when
/// `data` does not hold `rows` rows of `Σ blocks` columns.
pub fn to_blocks<T: Copy>(data: &[T], rows: usize, blocks: &[usize]) -> Option<Vec<T>> {
    let cols: usize = blocks.iter().sum();
    if cols.checked_mul(rows)? != data.len() {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut first = 0;
    for &w in blocks {
        for row in data.chunks_exact(cols.max(1)) {
            out.extend_from_slice(row.get(first..first + w)?);
        }
        first += w;
    }
    Some(out)
}

/// The inverse of [`to_blocks`]: row-major order again (`None` on the same mismatch).
pub fn from_blocks<T: Copy + Default>(data: &[T], rows: usize, blocks: &[usize]) -> Option<Vec<T>> {
    let cols: usize = blocks.iter().sum();
    if cols.checked_mul(rows)? != data.len() {
        return None;
    }
    let mut out = vec![T::default(); data.len()];
    let (mut first, mut at) = (0, 0);
    for &w in blocks {
        for row in out.chunks_exact_mut(cols.max(1)) {
            row.get_mut(first..first + w)?
                .copy_from_slice(data.get(at..at + w)?);
            at += w;
        }
        first += w;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_hold_contiguous_windows() {
        // [[0 1 2 3 4], [5 6 7 8 9]] in blocks of 2 and 3 columns.
        let data: Vec<u32> = (0..10).collect();
        let blocked = to_blocks(&data, 2, &[2, 3]).unwrap();
        assert_eq!(blocked, [0, 1, 5, 6, 2, 3, 4, 7, 8, 9]);
        assert_eq!(from_blocks(&blocked, 2, &[2, 3]), Some(data));
        assert_eq!(from_blocks(&blocked[1..], 2, &[2, 3]), None);
        assert_eq!(to_blocks(&blocked, 3, &[2, 3]), None);
    }

    #[test]
    fn blocks_must_tile_a_matrix() {
        assert!(check(&[2, 5], &[2, 3]).is_ok());
        assert!(check(&[2, 5], &[2, 2]).is_err());
        assert!(check(&[2, 5], &[5, 0]).is_err());
        assert!(check(&[10], &[10]).is_err());
        assert!(check(&[2, 5], &[usize::MAX, 6]).is_err());
    }
}

//! Post-processing of a label map (nnU-Net's): keep only the largest 26-connected
//! component of the foreground as a whole (the heart is one body), then of each
//! structure. Every other island is a false positive, and a far one dominates HD95.
//! The foreground pass comes first so that a large false blob away from the heart
//! cannot win over a structure's true, smaller body.

use ndarray::Array3;

/// Keep the heart's largest connected body, then each structure's largest component.
pub fn clean_label_map(labels: &mut Array3<u8>) {
    let mut fg = labels.mapv(|c| u8::from(c > 0));
    keep_largest_components(&mut fg);
    labels.zip_mut_with(&fg, |l, &f| {
        if f == 0 {
            *l = 0;
        }
    });
    keep_largest_components(labels);
}

/// Relabel every voxel of a structure outside that structure's largest component as
/// background (0). Ties keep the component found first in memory order.
pub fn keep_largest_components(labels: &mut Array3<u8>) {
    let (nx, ny, nz) = labels.dim();
    let idx = |i: usize, j: usize, k: usize| (i * ny + j) * nz + k;
    let flat: Vec<u8> = labels.iter().copied().collect();
    let mut comp = vec![u32::MAX; flat.len()];
    // per class: component sizes, found by flood fill
    let mut best: Vec<(u32, usize)> = vec![(u32::MAX, 0); 256];
    let mut stack = Vec::new();
    let mut next = 0u32;
    for start in 0..flat.len() {
        let c = flat[start];
        if c == 0 || comp[start] != u32::MAX {
            continue;
        }
        let id = next;
        next += 1;
        comp[start] = id;
        stack.push(start);
        let mut size = 0usize;
        while let Some(v) = stack.pop() {
            size += 1;
            let (i, j, k) = (v / (ny * nz), (v / nz) % ny, v % nz);
            for di in -1i64..=1 {
                for dj in -1i64..=1 {
                    for dk in -1i64..=1 {
                        let (a, b, d) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                        if a < 0
                            || b < 0
                            || d < 0
                            || a >= nx as i64
                            || b >= ny as i64
                            || d >= nz as i64
                        {
                            continue;
                        }
                        let w = idx(a as usize, b as usize, d as usize);
                        if flat[w] == c && comp[w] == u32::MAX {
                            comp[w] = id;
                            stack.push(w);
                        }
                    }
                }
            }
        }
        if size > best[c as usize].1 {
            best[c as usize] = (id, size);
        }
    }
    for (v, l) in labels.iter_mut().enumerate() {
        if *l != 0 && comp[v] != best[*l as usize].0 {
            *l = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn islands_go_and_each_structures_largest_body_stays() {
        let mut l = Array3::<u8>::zeros((10, 10, 10));
        // class 1: a 3×3×3 body and a single far voxel; class 2: two bodies, 8 and 2 voxels
        for i in 1..4 {
            for j in 1..4 {
                for k in 1..4 {
                    l[[i, j, k]] = 1;
                }
            }
        }
        l[[9, 9, 9]] = 1;
        for k in 0..8 {
            l[[6, 0, k]] = 2;
        }
        l[[0, 8, 0]] = 2;
        l[[1, 9, 1]] = 2; // diagonal neighbour of the previous: the same 26-component
        let mut want = l.clone();
        want[[9, 9, 9]] = 0;
        want[[0, 8, 0]] = 0;
        want[[1, 9, 1]] = 0;
        keep_largest_components(&mut l);
        assert_eq!(l, want);
        // a map that is already clean is unchanged
        let before = l.clone();
        keep_largest_components(&mut l);
        assert_eq!(l, before);
    }

    #[test]
    fn a_large_false_blob_away_from_the_heart_loses_to_the_true_structure() {
        let mut l = Array3::<u8>::zeros((12, 12, 12));
        // the heart: a 4×4×4 body of class 1 with a 2×2×2 class-7 part touching it
        for i in 2..6 {
            for j in 2..6 {
                for k in 2..6 {
                    l[[i, j, k]] = 1;
                }
            }
        }
        for i in 6..8 {
            for j in 2..4 {
                for k in 2..4 {
                    l[[i, j, k]] = 7;
                }
            }
        }
        let want = l.clone();
        // a class-7 blob of 3×3×3 in a far corner: larger than the true class-7 part
        for i in 9..12 {
            for j in 9..12 {
                for k in 9..12 {
                    l[[i, j, k]] = 7;
                }
            }
        }
        let mut per_class = l.clone();
        keep_largest_components(&mut per_class);
        assert_eq!(
            per_class[[7, 2, 2]],
            0,
            "per structure alone keeps the wrong blob"
        );
        clean_label_map(&mut l);
        assert_eq!(l, want);
    }
}

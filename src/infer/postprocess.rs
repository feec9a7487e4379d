//! Post-processing of a label map (nnU-Net's): for each structure keep only its
//! largest 26-connected component. The heart's structures are each one connected
//! body, so every other island is a false positive, and a far one dominates HD95.

use ndarray::Array3;

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
}

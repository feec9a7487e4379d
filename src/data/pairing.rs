//! Which window of the other modality's volume a window is paired with
//! (docs/method.md §1 and §5): the one whose centre sits at the same normalised
//! position, centre divided by the volume's extent. Training and inference use
//! this one function, so they fuse the same kind of pair.

/// Along one axis: the start of the window of edge `roi` in a volume of `other`
/// voxels whose centre sits at the same normalised position as the centre of the
/// window starting at `start` in a volume of `size` voxels. The result lies inside
/// the other volume, or reaches past an edge by no more than the given window does
/// past the same edge; when the other volume is shorter than the window it is
/// centred (and negative: the window is padded).
pub fn partner_start(start: i64, roi: usize, size: usize, other: usize) -> i64 {
    let half = roi as f64 / 2.0;
    // voxel k covers [k, k + 1): the window's centre is start + roi / 2
    let u = (start as f64 + half) / size.max(1) as f64;
    let s = (u * other as f64 - half).round() as i64;
    if other >= roi {
        let lo = start.min(0);
        let hi = (other - roi) as i64 + (start + roi as i64 - size as i64).max(0);
        s.clamp(lo, hi)
    } else {
        -(((roi - other) / 2) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_volumes_pair_each_window_with_itself() {
        for s in 0..=36 {
            assert_eq!(partner_start(s, 32, 68, 68), s);
        }
    }

    #[test]
    fn the_centre_keeps_its_normalised_position_in_a_larger_volume() {
        // centre 40 of 80 (u = 0.5) → centre 60 of 120 → start 44
        assert_eq!(partner_start(24, 32, 80, 120), 44);
        // centre 20 of 80 (u = 0.25) → 30 of 120 → start 14
        assert_eq!(partner_start(4, 32, 80, 120), 14);
        // clamped to the far end
        assert_eq!(partner_start(48, 32, 80, 40), 8);
    }

    #[test]
    fn a_window_past_an_edge_pairs_with_one_as_far_past_the_same_edge() {
        assert_eq!(partner_start(-5, 32, 60, 60), -5);
        assert_eq!(partner_start(33, 32, 60, 60), 33);
        // a larger volume: the normalised position, but no further out than the window
        assert_eq!(partner_start(-5, 32, 60, 90), 1);
        assert_eq!(partner_start(-20, 32, 60, 90), -20);
    }

    #[test]
    fn a_short_volume_gets_a_centred_padded_window() {
        assert_eq!(partner_start(10, 32, 80, 20), -6);
    }
}

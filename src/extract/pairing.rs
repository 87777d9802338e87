//! Which extracted ROI is which true neuron: one-to-one pairing by spatial overlap.
//!
//! Scoring extraction against a simulator's ground truth needs each ROI's neuron. ROI ids say
//! nothing when the ROIs come from elsewhere (suite2p, CaImAn, a hand-drawn set: their ids are
//! numbered from 0 like the neurons', so pairing by id scores ROI 17 against whichever neuron
//! happens to be number 17). Masks are paired by where they are instead.
//!
//! The overlap of two masks is the weighted Jaccard index of their weights, each mask first
//! normalised to sum 1 (suite2p's `lam` and a simulated footprint are both relative weights):
//! `J = sum(min(a, b)) / sum(max(a, b))`, 1 for identical masks, 0 for disjoint ones. With unit
//! sums, `sum(max) = 2 - sum(min)`, so only the shared pixels are visited. Pairs are then taken
//! greedily from the highest overlap down, each ROI and each neuron at most once, and only at
//! `J >= min_overlap`: a mask shifted by a third of its diameter still pairs with its neuron, a
//! mask over two neurons pairs with the one it covers more, and a mask over neuropil pairs with
//! nothing.

use std::collections::HashMap;

use crate::session::RoiTable;

/// Smallest weighted Jaccard overlap that pairs an ROI with a neuron. Two discs of equal
/// radius overlap at 0.25 when their centres are about 0.8 radii apart.
pub const MIN_OVERLAP: f32 = 0.25;

/// The outcome of [`pair_by_overlap`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pairing {
    /// For each ROI (in table order), the index of its neuron in the truth table.
    pub roi_neuron: Vec<Option<usize>>,
    /// For each ROI, the overlap with its neuron (0 when unpaired).
    pub overlap: Vec<f32>,
}

impl Pairing {
    /// ROIs paired with a neuron.
    pub fn matched(&self) -> usize {
        self.roi_neuron.iter().filter(|n| n.is_some()).count()
    }
}

/// Pairs the ROIs of `rois` with the masks of `truth` (both on the same frame).
pub fn pair_by_overlap(rois: &RoiTable, truth: &RoiTable, min_overlap: f32) -> Pairing {
    // Pixel -> (neuron, normalised weight) for every truth mask over it.
    let mut owners: HashMap<u32, Vec<(usize, f32)>> = HashMap::new();
    for j in 0..truth.len() {
        let (px, w) = truth.roi(j);
        let sum: f32 = w.iter().sum();
        if sum <= 0.0 {
            continue;
        }
        for (&p, &v) in px.iter().zip(w) {
            owners.entry(p).or_default().push((j, v / sum));
        }
    }
    let mut candidates: Vec<(f32, usize, usize)> = Vec::new();
    let mut shared: HashMap<usize, f32> = HashMap::new();
    for r in 0..rois.len() {
        let (px, w) = rois.roi(r);
        let sum: f32 = w.iter().sum();
        if sum <= 0.0 {
            continue;
        }
        shared.clear();
        for (p, &v) in px.iter().zip(w) {
            for &(j, t) in owners.get(p).map(Vec::as_slice).unwrap_or(&[]) {
                *shared.entry(j).or_default() += (v / sum).min(t);
            }
        }
        for (&j, &m) in &shared {
            let jaccard = m / (2.0 - m);
            if jaccard >= min_overlap {
                candidates.push((jaccard, r, j));
            }
        }
    }
    // Highest overlap first; ties by ROI then neuron so the pairing does not depend on hashing.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut pairing = Pairing {
        roi_neuron: vec![None; rois.len()],
        overlap: vec![0.0; rois.len()],
    };
    let mut taken = vec![false; truth.len()];
    for (jaccard, r, j) in candidates {
        if pairing.roi_neuron[r].is_none() && !taken[j] {
            pairing.roi_neuron[r] = Some(j);
            pairing.overlap[r] = jaccard;
            taken[j] = true;
        }
    }
    pairing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Discs of radius `r` at the given centres on a `side` x `side` frame, ids from `first_id`.
    fn discs(side: usize, r: f32, centres: &[(f32, f32)], first_id: u32) -> RoiTable {
        let mut t = RoiTable {
            height: side,
            width: side,
            ids: Vec::new(),
            offsets: vec![0],
            pixels: Vec::new(),
            weights: Vec::new(),
        };
        for (k, &(cy, cx)) in centres.iter().enumerate() {
            for y in 0..side {
                for x in 0..side {
                    let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    if d2 <= r * r {
                        t.pixels.push((y * side + x) as u32);
                        t.weights.push(1.0);
                    }
                }
            }
            t.ids.push(first_id + k as u32);
            t.offsets.push(t.pixels.len() as u64);
        }
        t
    }

    #[test]
    fn pairs_by_place_not_by_id() {
        let truth = discs(64, 5.0, &[(10.0, 10.0), (10.0, 40.0), (40.0, 25.0)], 0);
        // The same cells in another order, shifted by 2 px, numbered from 0 like the truth,
        // plus one mask on empty tissue.
        let rois = discs(
            64,
            5.0,
            &[(42.0, 25.0), (10.0, 12.0), (55.0, 55.0), (12.0, 40.0)],
            0,
        );
        let p = pair_by_overlap(&rois, &truth, MIN_OVERLAP);
        assert_eq!(p.roi_neuron, vec![Some(2), Some(0), None, Some(1)]);
        assert_eq!(p.matched(), 3);
        assert!(p.overlap[0] > 0.5 && p.overlap[0] < 1.0, "{:?}", p.overlap);
        assert_eq!(p.overlap[2], 0.0);
        // Identical masks overlap fully.
        let same = pair_by_overlap(&truth, &truth, MIN_OVERLAP);
        assert_eq!(same.roi_neuron, vec![Some(0), Some(1), Some(2)]);
        assert!(same.overlap.iter().all(|&o| (o - 1.0).abs() < 1e-5));
    }

    #[test]
    fn one_to_one_and_bounded_by_the_threshold() {
        let truth = discs(64, 5.0, &[(20.0, 20.0)], 0);
        // Two candidates for one neuron: the closer one wins, the other stays unpaired.
        let rois = discs(64, 5.0, &[(20.0, 24.0), (20.0, 21.0)], 0);
        let p = pair_by_overlap(&rois, &truth, MIN_OVERLAP);
        assert_eq!(p.roi_neuron, vec![None, Some(0)]);
        // Far enough apart to fall under the threshold: no pair at all.
        let far = discs(64, 5.0, &[(20.0, 28.0)], 0);
        assert_eq!(pair_by_overlap(&far, &truth, MIN_OVERLAP).matched(), 0);
        // A weighted mask: the overlap uses the weights, not just the support.
        let mut heavy = discs(64, 5.0, &[(20.0, 20.0)], 0);
        let (a, b) = (heavy.offsets[0] as usize, heavy.offsets[1] as usize);
        heavy.weights[a..b]
            .iter_mut()
            .step_by(2)
            .for_each(|w| *w = 3.0);
        let o = pair_by_overlap(&heavy, &truth, MIN_OVERLAP).overlap[0];
        assert!(o > MIN_OVERLAP && o < 0.9, "{o}");
    }
}

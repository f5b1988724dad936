//! Seeded, stratified subsets: per-class limits and train/validation splits. The same seed gives
//! the same split on every machine (ChaCha8 streams are platform-independent).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Indices grouped by class, each group in ascending order.
fn by_class(labels: &[i64], indices: &[usize], classes: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); classes];
    for &i in indices {
        if let Some(g) = usize::try_from(labels[i])
            .ok()
            .and_then(|c| groups.get_mut(c))
        {
            g.push(i);
        }
    }
    groups
}

/// At most `limit` samples per class (0 = all), chosen with the seed; ascending order.
pub fn limit_per_class(labels: &[i64], classes: usize, limit: usize, seed: u64) -> Vec<usize> {
    let all: Vec<usize> = (0..labels.len()).collect();
    if limit == 0 {
        return all;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x11_4d17);
    let mut out = Vec::new();
    for mut g in by_class(labels, &all, classes) {
        g.shuffle(&mut rng);
        g.truncate(limit);
        out.extend(g);
    }
    out.sort_unstable();
    out
}

/// Split `indices` into (train, val), holding out `fraction` of every class (rounded, at least
/// one sample of each class with two or more). Both lists ascending.
pub fn stratified(
    labels: &[i64],
    indices: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5b11_7000);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut g in by_class(labels, indices, classes) {
        g.shuffle(&mut rng);
        let mut k = (g.len() as f64 * fraction).round() as usize;
        if fraction > 0.0 && k == 0 && g.len() >= 2 {
            k = 1;
        }
        let k = k.min(g.len().saturating_sub(1));
        val.extend_from_slice(&g[..k]);
        train.extend_from_slice(&g[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Split `indices` into (train, held) by whole groups (GTSRB tracks): in every class, about
/// `fraction` of its groups go to `held` (at least one when the class has two or more). A group
/// never appears on both sides. Both lists ascending.
pub fn by_group(
    labels: &[i64],
    groups: &[u64],
    indices: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ac_0000);
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for members in by_class(labels, indices, classes) {
        let mut ids: Vec<u64> = members.iter().map(|&i| groups[i]).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.shuffle(&mut rng);
        let mut k = (ids.len() as f64 * fraction).round() as usize;
        if fraction > 0.0 && k == 0 && ids.len() >= 2 {
            k = 1;
        }
        let k = k.min(ids.len().saturating_sub(1));
        let held_ids: std::collections::HashSet<u64> = ids[..k].iter().copied().collect();
        for i in members {
            if held_ids.contains(&groups[i]) {
                held.push(i);
            } else {
                train.push(i);
            }
        }
    }
    train.sort_unstable();
    held.sort_unstable();
    (train, held)
}

/// Train, validation and test indices of a pool of `labels.len()` samples. Validation and test
/// are drawn together (per class, or per group when `groups` is given: GTSRB's tracks) and then
/// divided, as the seed's flowers split did; a fraction of 0 leaves that part empty. All three
/// lists ascending, and together a partition of the pool.
pub fn train_val_test(
    labels: &[i64],
    groups: Option<&[u64]>,
    classes: usize,
    val_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let hold = |idx: &[usize], frac: f64, salt: u64| -> (Vec<usize>, Vec<usize>) {
        if frac <= 0.0 {
            return (idx.to_vec(), Vec::new());
        }
        match groups {
            Some(g) => by_group(labels, g, idx, classes, frac, seed ^ salt),
            None => stratified(labels, idx, classes, frac, seed ^ salt),
        }
    };
    let all: Vec<usize> = (0..labels.len()).collect();
    let (train, held) = hold(&all, val_fraction + test_fraction, 0);
    let (val, test) = if test_fraction > 0.0 && val_fraction > 0.0 {
        hold(&held, test_fraction / (val_fraction + test_fraction), 1)
    } else if test_fraction > 0.0 {
        (Vec::new(), held)
    } else {
        (held, Vec::new())
    };
    (train, val, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_holds_out_the_fraction_of_each_class_deterministically() {
        let labels: Vec<i64> = (0..300).map(|i| (i % 3) as i64).collect();
        let all: Vec<usize> = (0..300).collect();
        let (t, v) = stratified(&labels, &all, 3, 0.2, 7);
        assert_eq!(v.len(), 60);
        assert_eq!(t.len(), 240);
        for c in 0..3 {
            assert_eq!(v.iter().filter(|&&i| labels[i] == c).count(), 20);
        }
        let mut both: Vec<usize> = t.iter().chain(&v).copied().collect();
        both.sort();
        assert_eq!(both, all, "a partition");
        assert_eq!(stratified(&labels, &all, 3, 0.2, 7), (t.clone(), v.clone()));
        assert_ne!(stratified(&labels, &all, 3, 0.2, 8).1, v);
    }

    #[test]
    fn train_val_test_partitions_the_pool() {
        let labels: Vec<i64> = (0..400).map(|i| (i % 4) as i64).collect();
        let (t, v, s) = train_val_test(&labels, None, 4, 0.1, 0.1, 3);
        assert_eq!((t.len(), v.len(), s.len()), (320, 40, 40));
        let mut all: Vec<usize> = t.iter().chain(&v).chain(&s).copied().collect();
        all.sort();
        assert_eq!(all, (0..400).collect::<Vec<_>>());
        let (t2, v2, s2) = train_val_test(&labels, None, 4, 0.2, 0.0, 3);
        assert_eq!((t2.len(), v2.len(), s2.len()), (320, 80, 0));
        assert_eq!(
            v2,
            [v, s]
                .concat()
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>(),
            "val and test are drawn together, then divided"
        );
        let (_, v3, s3) = train_val_test(&labels, None, 4, 0.0, 0.2, 3);
        assert!(v3.is_empty());
        assert_eq!(s3, v2);
    }

    #[test]
    fn limit_caps_each_class() {
        let labels: Vec<i64> = (0..100).map(|i| if i < 90 { 0 } else { 1 }).collect();
        let kept = limit_per_class(&labels, 2, 5, 1);
        assert_eq!(kept.iter().filter(|&&i| labels[i] == 0).count(), 5);
        assert_eq!(kept.iter().filter(|&&i| labels[i] == 1).count(), 5);
    }
}

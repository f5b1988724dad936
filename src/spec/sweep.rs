//! Sweep expansion: a spec's `[sweep]` section turned into points, each a fully validated spec.
//!
//! ```toml
//! [sweep]
//! mode = "grid"                 # grid (cartesian product) | random
//! samples = 20                  # random mode only; seeded by the spec's seed
//! "train.lr" = [1e-2, 1e-3, 1e-4]
//! "head.hidden" = [[], [256], [512, 256]]
//! ```
//! Random mode also takes `{ log_uniform = [a, b] }`, `{ uniform = [a, b] }`, `{ choice = [...] }`.
//! Every point is validated before anything runs; an error names the point and the key.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{load_point, Spec, SweepMode, SweepSection};
use crate::error::{Error, Result};

/// One point of a sweep: its position, its overrides, and its validated spec.
#[derive(Debug, Clone)]
pub struct Point {
    pub index: usize,
    pub overrides: Vec<(String, toml::Value)>,
    pub spec: Spec,
}

impl Point {
    /// `train.lr=0.01 head.hidden=[256]`
    pub fn describe(&self) -> String {
        if self.overrides.is_empty() {
            return "(base spec)".into();
        }
        self.overrides
            .iter()
            .map(|(k, v)| format!("{k}={}", inline(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// A short, file-name-safe label of a point's overrides: `lr0.01_hidden256`.
fn label(overrides: &[(String, toml::Value)]) -> String {
    let mut parts = Vec::new();
    for (k, v) in overrides {
        let key = k.rsplit('.').next().unwrap_or(k);
        let val: String = inline(v)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            .collect();
        parts.push(format!("{key}{val}"));
    }
    let mut s = parts.join("_");
    s.truncate(48);
    s
}

enum Dist {
    Choice(Vec<toml::Value>),
    Uniform(f64, f64),
    LogUniform(f64, f64),
}

fn sweep_err(path: &Path, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::Spec(format!("{}: key `sweep.\"{key}\"`: {msg}", path.display()))
}

fn pair(path: &Path, key: &str, name: &str, v: &toml::Value) -> Result<(f64, f64)> {
    let nums: Option<Vec<f64>> = v.as_array().map(|a| {
        a.iter()
            .filter_map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
            .collect()
    });
    match nums.as_deref() {
        Some(&[a, b]) if a < b && a.is_finite() && b.is_finite() => Ok((a, b)),
        _ => Err(sweep_err(
            path,
            key,
            format!("{name} takes two increasing numbers [low, high]"),
        )),
    }
}

fn parse_dist(path: &Path, key: &str, v: &toml::Value, mode: SweepMode) -> Result<Dist> {
    match (v, mode) {
        (toml::Value::Array(a), _) if a.is_empty() => Err(sweep_err(path, key, "the list of values is empty")),
        (toml::Value::Array(a), _) => Ok(Dist::Choice(a.clone())),
        (toml::Value::Table(_), SweepMode::Grid) => Err(sweep_err(
            path,
            key,
            "distributions ({ uniform = ... }, { log_uniform = ... }, { choice = ... }) need mode = \"random\"; grid mode takes lists",
        )),
        (toml::Value::Table(t), SweepMode::Random) => {
            let (name, val) = match (t.len(), t.iter().next()) {
                (1, Some(kv)) => kv,
                _ => return Err(sweep_err(path, key, "a distribution is one of { uniform = [a, b] }, { log_uniform = [a, b] }, { choice = [...] }")),
            };
            match name.as_str() {
                "uniform" => pair(path, key, "uniform", val).map(|(a, b)| Dist::Uniform(a, b)),
                "log_uniform" => {
                    let (a, b) = pair(path, key, "log_uniform", val)?;
                    if a <= 0.0 {
                        return Err(sweep_err(path, key, "log_uniform needs a positive lower bound"));
                    }
                    Ok(Dist::LogUniform(a, b))
                }
                "choice" => match val.as_array() {
                    Some(a) if !a.is_empty() => Ok(Dist::Choice(a.clone())),
                    _ => Err(sweep_err(path, key, "choice takes a non-empty list")),
                },
                other => Err(sweep_err(
                    path,
                    key,
                    format!("unknown distribution {other:?}; expected uniform, log_uniform or choice"),
                )),
            }
        }
        _ => Err(sweep_err(path, key, format!("expected a list of values, found {}", v.type_str()))),
    }
}

/// Flatten `train = { lr = [...] }` (unquoted dotted keys) into `"train.lr" = [...]`.
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let is_dist = v.as_table().is_some_and(|d| {
            d.keys()
                .any(|n| matches!(n.as_str(), "uniform" | "log_uniform" | "choice"))
        });
        match v {
            toml::Value::Table(inner) if !is_dist => flatten(&key, inner, out),
            _ => out.push((key, v.clone())),
        }
    }
}

/// Expand a spec file (with the environment and `--set` overrides) into its points.
pub fn expand(path: &Path, sets: &[String]) -> Result<Vec<Point>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    expand_str(path, &text, sets, std::env::vars().collect())
}

/// The most points one sweep may have: each is a full experiment, and a typo in a grid
/// (a list of 1000 values where 10 were meant) should be an error, not a plan of a million runs.
pub const MAX_POINTS: usize = 100_000;

fn check_points(path: &Path, count: Option<usize>) -> Result<()> {
    match count {
        Some(n) if n <= MAX_POINTS => Ok(()),
        _ => Err(Error::Spec(format!(
            "{}: the sweep has {} points, more than the {MAX_POINTS} runner plans at once; split it into several files or use mode = \"random\" with fewer samples",
            path.display(),
            count.map(|n| n.to_string()).unwrap_or_else(|| "too many".into())
        ))),
    }
}

/// Override sets, one a point.
type Combos = Vec<Vec<(String, toml::Value)>>;

/// The points of the sweep in `text` (one point, without overrides, when it has no `[sweep]`),
/// each validated as a whole spec.
pub fn expand_str(
    path: &Path,
    text: &str,
    sets: &[String],
    env: Vec<(String, String)>,
) -> Result<Vec<Point>> {
    let base = load_point(path, text, sets, env.clone(), None)?;
    let Some(sweep) = base.raw.sweep.clone() else {
        return Ok(vec![Point {
            index: 0,
            overrides: vec![],
            spec: base,
        }]);
    };
    let mut params = Vec::new();
    flatten("", &sweep.params, &mut params);
    if params.is_empty() {
        return Err(Error::Spec(format!(
            "{}: [sweep] names no keys to vary",
            path.display()
        )));
    }
    let dists: Vec<(String, Dist)> = params
        .iter()
        .map(|(k, v)| Ok((k.clone(), parse_dist(path, k, v, sweep.mode)?)))
        .collect::<Result<_>>()?;
    let combos = match sweep.mode {
        SweepMode::Grid => grid_points(path, &sweep, &dists)?,
        SweepMode::Random => random_points(path, &sweep, &dists, base.seed)?,
    };
    combos
        .into_iter()
        .enumerate()
        .map(|(index, overrides)| {
            let mut spec =
                load_point(path, text, sets, env.clone(), Some(&overrides)).map_err(|e| {
                    let desc = overrides
                        .iter()
                        .map(|(k, v)| format!("{k}={}", inline(v)))
                        .collect::<Vec<_>>()
                        .join(" ");
                    Error::Spec(format!("sweep point {index} ({desc}): {e}"))
                })?;
            spec.point_label = label(&overrides);
            Ok(Point {
                index,
                overrides,
                spec,
            })
        })
        .collect()
}

/// Every combination of the choices, the first key varying slowest.
fn grid_points(path: &Path, sweep: &SweepSection, dists: &[(String, Dist)]) -> Result<Combos> {
    if sweep.samples.is_some() {
        return Err(Error::Spec(format!(
            "{}: key `sweep.samples` is for mode = \"random\"",
            path.display()
        )));
    }
    let count = dists.iter().try_fold(1usize, |n, (_, d)| match d {
        Dist::Choice(v) => n.checked_mul(v.len()),
        _ => Some(n),
    });
    check_points(path, count)?;
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
    for (k, d) in dists {
        let Dist::Choice(values) = d else { continue };
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((k.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    Ok(combos)
}

/// `sweep.samples` points drawn from the distributions with the spec's seed.
fn random_points(
    path: &Path,
    sweep: &SweepSection,
    dists: &[(String, Dist)],
    seed: u64,
) -> Result<Combos> {
    let n = match sweep.samples {
        Some(n) if n > 0 => n,
        _ => {
            return Err(Error::Spec(format!(
                "{}: key `sweep.samples` is missing: mode = \"random\" needs the number of points",
                path.display()
            )))
        }
    };
    check_points(path, Some(n))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5_3ee9);
    Ok((0..n)
        .map(|_| {
            dists
                .iter()
                .map(|(k, d)| {
                    let v = match d {
                        Dist::Choice(vs) => vs[rng.gen_range(0..vs.len())].clone(),
                        Dist::Uniform(a, b) => toml::Value::Float(rng.gen_range(*a..*b)),
                        Dist::LogUniform(a, b) => {
                            toml::Value::Float(rng.gen_range(a.ln()..b.ln()).exp())
                        }
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(text: &str) -> std::result::Result<Vec<Point>, String> {
        expand_str(Path::new("s.toml"), text, &[], vec![]).map_err(|e| e.to_string())
    }

    #[test]
    fn grid_is_the_cartesian_product_in_key_order() {
        let p =
            expand("[sweep]\n\"train.lr\" = [0.1, 0.01]\n\"head.hidden\" = [[], [8]]\n").unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].describe(), "head.hidden=[] train.lr=0.1");
        assert_eq!(p[3].describe(), "head.hidden=[8] train.lr=0.01");
        assert_eq!(p[3].spec.head.hidden, vec![8]);
        assert_eq!(p[3].spec.train.lr, 0.01);
        assert!(p[3].spec.raw.sweep.is_none());
        assert_eq!(p[1].spec.point_label, "hidden_lr0.01");
        // unquoted dotted keys are the same thing
        let q = expand("[sweep]\ntrain.lr = [0.1, 0.01]\n").unwrap();
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn random_mode_is_seeded_and_respects_distributions() {
        let text = "seed = 3\n[sweep]\nmode = \"random\"\nsamples = 6\n\"train.lr\" = { log_uniform = [1e-5, 1e-1] }\n\"train.batch_size\" = { choice = [32, 64] }\n";
        let a = expand(text).unwrap();
        let b = expand(text).unwrap();
        assert_eq!(a.len(), 6);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.describe(), y.describe());
            assert!((1e-5..1e-1).contains(&x.spec.train.lr));
            assert!([32, 64].contains(&x.spec.train.batch_size));
        }
    }

    #[test]
    fn bad_sweeps_fail_naming_the_key() {
        let e = expand("[sweep]\n\"train.lrr\" = [0.1]\n").unwrap_err();
        assert!(
            e.contains("sweep point 0") && e.contains("lrr") && e.contains("did you mean `lr`?"),
            "{e}"
        );
        let e = expand("[sweep]\n\"train.lr\" = []\n").unwrap_err();
        assert!(
            e.contains("sweep.\"train.lr\"") && e.contains("empty"),
            "{e}"
        );
        let e = expand("[sweep]\n\"train.lr\" = { uniform = [0.1, 0.2] }\n").unwrap_err();
        assert!(
            e.contains("train.lr") && e.contains("mode = \"random\""),
            "{e}"
        );
        let e = expand("[sweep]\nmode = \"random\"\n\"train.lr\" = [0.1]\n").unwrap_err();
        assert!(e.contains("sweep.samples") && e.contains("missing"), "{e}");
        let e = expand("[sweep]\n\"train.epochs\" = [1, 0]\n").unwrap_err();
        assert!(
            e.contains("sweep point 1") && e.contains("train.epochs"),
            "{e}"
        );
    }
}

//! Learning-rate schedules, evaluated once per epoch (0-based).

use crate::spec::Schedule;

pub fn lr_at(
    schedule: Schedule,
    base: f64,
    epoch: usize,
    epochs: usize,
    step_size: usize,
    gamma: f64,
) -> f64 {
    match schedule {
        Schedule::Constant => base,
        Schedule::Step => base * gamma.powi((epoch / step_size.max(1)) as i32),
        Schedule::Cosine => {
            let t = epoch as f64 / epochs.max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(lr_at(Schedule::Constant, 0.1, 5, 10, 3, 0.5), 0.1);
        assert_eq!(lr_at(Schedule::Step, 0.1, 5, 10, 3, 0.5), 0.05);
        assert_eq!(lr_at(Schedule::Step, 0.1, 6, 10, 3, 0.5), 0.025);
        assert_eq!(lr_at(Schedule::Cosine, 0.1, 0, 10, 3, 0.5), 0.1);
        assert!((lr_at(Schedule::Cosine, 0.1, 5, 10, 3, 0.5) - 0.05).abs() < 1e-12);
    }
}

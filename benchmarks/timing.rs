//! The timing loop of the step benchmarks (`train_step.rs`, `seg_step.rs`): each step timed,
//! the warm-up steps dropped, the median reported.

use std::time::Instant;

/// Runs `step(i)` for i in 0..`steps`; returns the median seconds of the steps from `warmup`
/// on, and those seconds sorted.
pub fn median_step_seconds(steps: usize, warmup: usize, mut step: impl FnMut(usize)) -> (f64, Vec<f64>) {
    let mut times = Vec::with_capacity(steps.saturating_sub(warmup));
    for i in 0..steps {
        let start = Instant::now();
        step(i);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times)
}

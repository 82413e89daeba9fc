//! Limited-memory BFGS (Nocedal and Wright 2006, Alg. 7.4 and 7.5) with a backtracking
//! Armijo line search, for the smooth strategy objectives. A non-finite value is treated as
//! "too far" and the step is shortened.

/// The result of a minimization.
pub(crate) struct Minimum {
    /// The best point found.
    pub x: Vec<f64>,
    /// The objective there.
    pub value: f64,
}

/// Stopping rules.
pub(crate) struct Options {
    /// Most iterations.
    pub max_iterations: usize,
    /// Stop after [`STALL`] iterations in a row that lower the value by less than this
    /// (absolute: the objectives are logarithms, so this is a relative change of the loss).
    pub tolerance: f64,
}

const HISTORY: usize = 12;
const STALL: usize = 4;
const ARMIJO: f64 = 1e-4;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimizes `f`, which returns the value at `x` and writes the gradient into its second
/// argument, starting from `x0`.
pub(crate) fn minimize<F>(mut f: F, x0: Vec<f64>, options: &Options) -> Minimum
where
    F: FnMut(&[f64], &mut [f64]) -> f64,
{
    let dim = x0.len();
    let mut x = x0;
    let mut g = vec![0.0; dim];
    let mut value = f(&x, &mut g);
    if !value.is_finite() || dim == 0 {
        return Minimum { x, value };
    }
    let mut history: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::with_capacity(HISTORY);
    let mut stalled = 0;
    let mut trial = vec![0.0; dim];
    let mut trial_g = vec![0.0; dim];
    for _ in 0..options.max_iterations {
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            for (qi, yi) in q.iter_mut().zip(y) {
                *qi -= a * yi;
            }
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.last() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|qi| *qi *= gamma);
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            for (qi, si) in q.iter_mut().zip(s) {
                *qi += (a - b) * si;
            }
        }
        let mut direction: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 || !slope.is_finite() {
            history.clear();
            direction = g.iter().map(|v| -v).collect();
            slope = -dot(&g, &g);
        }
        if slope == 0.0 {
            break;
        }
        // Without curvature information, first try a unit move in the largest coordinate.
        let mut step = if history.is_empty() {
            1.0 / direction.iter().fold(0.0f64, |m, d| m.max(d.abs()))
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..60 {
            for ((t, xi), di) in trial.iter_mut().zip(&x).zip(&direction) {
                *t = xi + step * di;
            }
            let v = f(&trial, &mut trial_g);
            if v.is_finite() && v <= value + ARMIJO * step * slope {
                accepted = Some(v);
                break;
            }
            // Quadratic interpolation of the value along the line, kept within [0.1, 0.5].
            let shrink = if v.is_finite() {
                let curvature = v - value - step * slope;
                (-slope * step / (2.0 * curvature)).clamp(0.1, 0.5)
            } else {
                0.1
            };
            step *= shrink;
        }
        let Some(new_value) = accepted else {
            break;
        };
        let s: Vec<f64> = trial.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = trial_g.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() && sy > 0.0 {
            if history.len() == HISTORY {
                history.remove(0);
            }
            history.push((s, y, 1.0 / sy));
        }
        let decrease = value - new_value;
        std::mem::swap(&mut x, &mut trial);
        std::mem::swap(&mut g, &mut trial_g);
        value = new_value;
        if decrease < options.tolerance {
            stalled += 1;
            if stalled >= STALL {
                break;
            }
        } else {
            stalled = 0;
        }
    }
    Minimum { x, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimizes_the_rosenbrock_function() {
        let rosenbrock = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let m = minimize(
            rosenbrock,
            vec![-1.2, 1.0],
            &Options {
                max_iterations: 500,
                tolerance: 1e-16,
            },
        );
        assert!(
            (m.x[0] - 1.0).abs() < 1e-6 && (m.x[1] - 1.0).abs() < 1e-6,
            "{:?}",
            m.x
        );
        assert!(m.value < 1e-12);
    }
}

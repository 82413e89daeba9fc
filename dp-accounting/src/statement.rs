//! How privacy numbers are shown to people: epsilon is rounded up, never down.

/// Rounds `x` up to `digits` decimals, so a displayed epsilon never understates the loss.
pub fn round_up(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    let up = (x * scale).ceil() / scale;
    // Guard against the division rounding below x.
    if up < x {
        up + 1.0 / scale
    } else {
        up
    }
}

#[cfg(test)]
mod tests {
    use super::round_up;

    #[test]
    fn rounds_up() {
        assert_eq!(round_up(2.9901, 2), 3.0);
        assert_eq!(round_up(3.0, 2), 3.0);
        assert!(round_up(0.1 + 0.2, 2) >= 0.1 + 0.2);
    }
}

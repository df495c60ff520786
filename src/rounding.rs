//! Float rounding for hot loops (refinement, augmentation, the synthetic generator), in
//! operations that vectorise: the x86-64 baseline has no rounding instruction (`f32::floor` is
//! a libm call there), and the checked `as i32` conversion does not vectorise. One set of
//! helpers, exact for |v| < 2³¹ (every coordinate, colour and hue they see).

/// `v` truncated toward zero to an i32, saturating at the i32 range (NaN gives `i32::MIN`).
#[inline(always)]
pub(crate) fn to_int(v: f32) -> i32 {
    // 2³¹ − 128 is the largest f32 below 2³¹.
    let v = v.max(-2_147_483_648.0).min(2_147_483_520.0);
    // SAFETY: the clamp leaves v finite and inside the i32 range.
    unsafe { v.to_int_unchecked() }
}

/// `v.floor()` for |v| < 2³¹.
#[inline(always)]
pub(crate) fn floor(v: f32) -> f32 {
    let t = to_int(v) as f32;
    if t > v {
        t - 1.0
    } else {
        t
    }
}

/// `v.ceil()` for |v| < 2³¹.
#[inline(always)]
pub(crate) fn ceil(v: f32) -> f32 {
    -floor(-v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_agrees_with_the_standard_library() {
        for v in [0.0f32, -0.0, 0.5, -0.5, 1.0, -1.0, 2.75, -2.75, 1e6 + 0.5, -1e6 - 0.5, 123456.0, -7.0] {
            assert_eq!((floor(v), ceil(v), to_int(v)), (v.floor(), v.ceil(), v as i32), "{v}");
        }
        assert_eq!((to_int(1e12), to_int(-1e12), to_int(f32::NAN)), (2_147_483_520, i32::MIN, i32::MIN));
        // Near integers and in the ranges the augmentation and the generator use.
        for v in [-2.5f32, -0.41, -1e-7, 1e-7, 0.999_999_9, 1.5, 2.99, 1000.25, 2_000_000_000.5, -2_000_000_000.5] {
            assert_eq!(floor(v), v.floor(), "{v}");
        }
    }
}

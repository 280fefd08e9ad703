//! Small helpers over a caller-supplied random source.

use rand::RngCore;

/// A uniform integer in `0..n` (`n > 0`) by Lemire's multiply-shift: one multiplication, and
/// a bias below 2^-32 for the table sizes a load balancer sees.
#[inline]
pub(crate) fn below<R: RngCore + ?Sized>(rng: &mut R, n: u32) -> u32 {
    debug_assert!(n > 0);
    ((u64::from(rng.next_u32()) * u64::from(n)) >> 32) as u32
}

/// A uniform integer in `0..n` (`n > 0`) for 64-bit ranges.
#[inline]
pub(crate) fn below_u64<R: RngCore + ?Sized>(rng: &mut R, n: u64) -> u64 {
    debug_assert!(n > 0);
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

//! xDS `FractionalPercent`: a share of requests, drawn per request.

use rand::RngCore;

use crate::rand_util::below;

/// The denominator of a [`Fraction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Denominator {
    /// Parts per hundred.
    #[default]
    Hundred,
    /// Parts per ten thousand.
    TenThousand,
    /// Parts per million.
    Million,
}

/// A share of requests (xDS `FractionalPercent`); numerators above the denominator mean 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fraction {
    /// The numerator.
    pub numerator: u32,
    /// The denominator.
    pub denominator: Denominator,
}

/// One million: the resolution every fraction is scaled to.
pub const MILLION: u32 = 1_000_000;

impl Fraction {
    /// `n` percent.
    pub const fn percent(n: u32) -> Self {
        Self {
            numerator: n,
            denominator: Denominator::Hundred,
        }
    }

    /// `n` parts per million.
    pub const fn per_million(n: u32) -> Self {
        Self {
            numerator: n,
            denominator: Denominator::Million,
        }
    }

    /// 100%.
    pub const ALL: Self = Self::percent(100);

    /// The share in parts per million, clamped to one million.
    pub fn as_per_million(self) -> u32 {
        let scale = match self.denominator {
            Denominator::Hundred => 10_000,
            Denominator::TenThousand => 100,
            Denominator::Million => 1,
        };
        self.numerator.saturating_mul(scale).min(MILLION)
    }

    /// Draws once: true with this probability.
    pub fn sample<R: RngCore + ?Sized>(self, rng: &mut R) -> bool {
        sample_per_million(self.as_per_million(), rng)
    }
}

/// True with probability `ppm / 1e6`; never draws for 0 or 100%.
#[inline]
pub(crate) fn sample_per_million<R: RngCore + ?Sized>(ppm: u32, rng: &mut R) -> bool {
    match ppm {
        0 => false,
        MILLION.. => true,
        _ => below(rng, MILLION) < ppm,
    }
}

//! The simulator's random numbers: deterministic for a seed, and fast enough to draw a noise sample
//! for every pixel of a 512x512 frame at hundreds of frames per second on one core.
//!
//! `rand_chacha` seeds everything that is drawn once (neurons, clips); the per-pixel noise uses
//! xoshiro256++ and a table of normal quantiles, because a Box-Muller draw per pixel would cost more
//! than the rest of the frame's rendering together.

use std::sync::OnceLock;

/// xoshiro256++ (Blackman and Vigna), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub struct FastRng {
    s: [u64; 4],
}

impl FastRng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        FastRng {
            s: [next(), next(), next(), next()],
        }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Shuffles `v` in place (Fisher-Yates from the end), every order equally likely.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = ((self.uniform() * (i + 1) as f64) as usize).min(i);
            v.swap(i, j);
        }
    }

    /// Standard normal by Box-Muller (for the few draws per frame that need the full tails).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fills `out` with approximately standard normal values (quantile table of 2^16 entries:
    /// exact to the table's resolution, tails cut at about 4.2 sigma).
    #[inline]
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let table = normal_table();
        let mut chunks = out.chunks_exact_mut(4);
        for c in &mut chunks {
            let r = self.next_u64();
            c[0] = table[(r & 0xFFFF) as usize];
            c[1] = table[((r >> 16) & 0xFFFF) as usize];
            c[2] = table[((r >> 32) & 0xFFFF) as usize];
            c[3] = table[(r >> 48) as usize];
        }
        let rest = chunks.into_remainder();
        let r = self.next_u64();
        for (i, v) in rest.iter_mut().enumerate() {
            *v = table[((r >> (16 * i)) & 0xFFFF) as usize];
        }
    }

    /// Poisson draw (Knuth for small means, normal approximation above 30).
    pub fn poisson(&mut self, mean: f64) -> u32 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u32;
        }
        let l = (-mean).exp();
        let mut k = 0u32;
        let mut p = 1.0;
        loop {
            p *= self.uniform();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

fn normal_table() -> &'static [f32; 65536] {
    static TABLE: OnceLock<Box<[f32; 65536]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 65536]);
        for (i, v) in t.iter_mut().enumerate() {
            *v = inverse_normal_cdf((i as f64 + 0.5) / 65536.0) as f32;
        }
        t
    })
}

/// Acklam's rational approximation of the normal quantile (relative error below 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let plow = 0.02425;
    if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -inverse_normal_cdf(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_normals_have_unit_variance() {
        let mut r = FastRng::new(7);
        let mut v = vec![0f32; 1 << 18];
        r.fill_normal(&mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn poisson_mean() {
        let mut r = FastRng::new(3);
        for &m in &[0.05, 0.5, 4.0, 50.0] {
            let n = 100_000;
            let s: u64 = (0..n).map(|_| r.poisson(m) as u64).sum();
            let est = s as f64 / n as f64;
            assert!((est - m).abs() < 0.05 * m.max(0.2), "mean {m} est {est}");
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (FastRng::new(42), FastRng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}

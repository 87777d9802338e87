//! A [`Display`] on a simulated clock: flips at exactly `k / refresh_hz`, never misses, follows the
//! same [`Player`] rules as `rig present`, photodiode toggling on every flip. The daemon's simulated
//! rig can drive it like a real presenter. (The simulated rig's own trial scheduler,
//! `sim::display::VirtualDisplay`, is unchanged.)

use std::collections::HashMap;

use super::player::Player;
use super::protocol::upload_size;
use super::{Display, DisplayError, PresentedFrame};

pub struct VirtualPresenter {
    refresh_hz: f64,
    stim_rate_hz: f64,
    frames: HashMap<u32, usize>,
    player: Player,
    k: u64,
    now: f64,
    photodiode: u8,
}

impl VirtualPresenter {
    pub fn new(refresh_hz: f64, stim_rate_hz: f64) -> Self {
        VirtualPresenter {
            refresh_hz,
            stim_rate_hz,
            frames: HashMap::new(),
            player: Player::new(refresh_hz),
            k: 0,
            now: 0.0,
            photodiode: 0,
        }
    }

    /// Moves the simulated clock to `t` (rig seconds); flips up to `t` become due.
    pub fn advance_to(&mut self, t: f64) {
        self.now = self.now.max(t);
    }

    /// Time of the next flip.
    pub fn next_flip_time(&self) -> f64 {
        self.k as f64 / self.refresh_hz
    }
}

impl Display for VirtualPresenter {
    fn upload_clip(
        &mut self,
        id: u32,
        frames: &[u8],
        f: usize,
        h: usize,
        w: usize,
    ) -> Result<(), DisplayError> {
        let n = upload_size(f, h, w).map_err(DisplayError::BadClip)?;
        if frames.len() != n {
            return Err(DisplayError::BadClip(format!(
                "clip {id}: {} bytes for {f}x{h}x{w}",
                frames.len()
            )));
        }
        self.frames.insert(id, f);
        Ok(())
    }

    fn play(&mut self, id: u32, at_rig_time: Option<f64>) -> Result<(), DisplayError> {
        let f = *self.frames.get(&id).ok_or(DisplayError::UnknownClip(id))?;
        self.player.play(id, f, at_rig_time, self.stim_rate_hz);
        Ok(())
    }

    fn gray(&mut self) -> Result<(), DisplayError> {
        self.player.gray();
        Ok(())
    }

    fn poll_flips(&mut self, out: &mut Vec<PresentedFrame>) -> Result<usize, DisplayError> {
        let n0 = out.len();
        while self.next_flip_time() <= self.now + 1e-9 {
            let t = self.next_flip_time();
            let (clip, frame) = self.player.content(self.k, t).report();
            self.photodiode ^= 1;
            out.push(PresentedFrame {
                time: t,
                clip,
                frame,
                photodiode: self.photodiode,
                missed: 0,
                seq: self.k,
            });
            self.k += 1;
        }
        Ok(out.len() - n0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_presenter_plays_on_the_refresh_grid() {
        let mut d = VirtualPresenter::new(60.0, 30.0);
        d.upload_clip(5, &[0u8; 4 * 2 * 2], 4, 2, 2).unwrap();
        assert!(matches!(d.play(6, None), Err(DisplayError::UnknownClip(6))));
        d.play(5, Some(0.1)).unwrap();
        let mut out = Vec::new();
        d.advance_to(0.3);
        d.poll_flips(&mut out).unwrap();
        assert_eq!(out.len(), 19); // flips at 0, 1/60, ..., 18/60
        assert_eq!(out[5].clip, -1);
        assert_eq!((out[6].clip, out[6].frame), (5, 0)); // t = 0.1
        assert_eq!((out[13].clip, out[13].frame), (5, 3));
        assert_eq!(out[14].clip, -1);
        assert!(out.windows(2).all(|w| w[0].photodiode != w[1].photodiode));
    }
}

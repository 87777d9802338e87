//! One ROI pixel as NWB's `pixel_mask` holds it, shared by `export` (which writes masks) and
//! `import` (which reads them), so the two can never disagree on the axes.
//!
//! `x` is the first image axis (the row), `y` the second (the column): the axis order of the
//! movie (`TwoPhotonSeries.data[frame, x, y]`) and of `image_mask[roi, x, y]`, and how suite2p
//! writes and reads its masks (`x` holds its `ypix`). pynwb's helpers disagree with each other
//! (`image_to_pixel` takes x from the first axis, `pixel_to_image` puts it on the second), so
//! the data's own axis order rules.

use hdf5::H5Type;

#[derive(H5Type, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct PixelMask {
    /// Row.
    pub x: u32,
    /// Column.
    pub y: u32,
    pub weight: f32,
}

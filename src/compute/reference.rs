//! The scalar specification of a merge tile: one element at a time, no tricks. Slow; used to
//! test the fast paths byte for byte.

use super::{BaseRows, MergeTile};
use crate::format::dtype::{decode_into, encode_into, round_through};

/// Computes `tile` into `out` the obvious way. Returns whether all outputs are finite.
pub fn merge_tile(tile: &MergeTile<'_>, out: &mut [u8]) -> bool {
    let n = tile.rows * tile.cols;
    let mut w = vec![0f32; n];
    match tile.base {
        BaseRows::Float { bytes, dtype } => decode_into(bytes, dtype, &mut w),
        BaseRows::Bnb(q) => q.decode(tile.row0 * tile.cols as u64, &mut w),
    }
    if let Some(l) = tile.lora {
        for o in 0..tile.rows {
            for i in 0..tile.cols {
                let mut acc = 0f32;
                for k in 0..l.r {
                    acc = l.b[o * l.r + k].mul_add(l.a[k * tile.cols + i], acc);
                }
                let delta = round_through(acc * l.scale, l.delta_dtype);
                w[o * tile.cols + i] += delta;
            }
        }
    }
    encode_into(&w, tile.out_dtype, out);
    let mut finite = true;
    for v in &w {
        finite &= round_through(*v, tile.out_dtype).is_finite();
    }
    finite
}

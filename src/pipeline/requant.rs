//! `merged_4bit`: requantizing merged tiles as bitsandbytes 4-bit (on the backend's device when
//! it can, else on the host pool), the helper tensors of a quantized weight, and the stats pass
//! that fixes the quant-state JSON lengths before writing.


use rayon::prelude::*;

use crate::compute::{Backend, QuantSpec};
use crate::error::{Error, Result};
use crate::format::dtype::FloatDtype;
use crate::format::dtype::decode_into;
use crate::format::encode;
use crate::plan::{Op, Plan, QuantPart, QuantStats};

use super::compute::{fast_tile, on_pool, Computer};
use super::items::{TileRows, tiles, ExecConfig, Inputs};

impl<'a, 'p> Computer<'a, 'p> {
    /// Packed codes of a quant group's tile into `buf`, or with `buf = None` only the block
    /// absmax values (the stats pass); either way it appends the block absmax values to
    /// `self.absmax`. A backend that requantizes on its device does the whole tile
    /// ([`Backend::quant_tile`]); otherwise the blocks are spread over the backend's host pool,
    /// each task quantizing its blocks into a scratch of its own and packing them into its part
    /// of `buf`.
    pub(super) fn quant_codes(&mut self, group: usize, row0: u64, rows: usize, mut buf: Option<&mut [u8]>) -> Result<bool> {
        let g = &self.plan.quant_groups[group];
        let cols = g.shape[1] as usize;
        let n = g.numel() as usize;
        let k0 = row0 as usize * cols;
        let len = rows * cols;
        let bs = g.blocksize as usize;
        let qt = g.quant_type;
        let mut am = vec![0f32; len.div_ceil(bs)];
        if buf.as_ref().is_some_and(|b| b.len() != len.div_ceil(2)) {
            return Err(Error::Internal(format!(
                "`{}`: codes buffer has the wrong length",
                g.name
            )));
        }
        let spec = QuantSpec {
            quant_type: qt,
            blocksize: bs,
            numel: n as u64,
        };
        let key = self.plan.tensors.len() + group;
        let (op, pre_round) = (&g.source, g.pre_round);
        let finite = match op {
            Op::Compute {
                base,
                lora,
                extra: None,
            } => {
                // The backend rounds its f32 result once to the output dtype, so asking it for
                // `pre_round` gives the f32 result rounded through it, with half the bytes.
                let dt = pre_round.unwrap_or(FloatDtype::F32);
                self.load(key, op);
                let (base_rows, release) = self.base_rows(base, cols, row0, rows);
                release.populate();
                let tile = fast_tile(&self.factors, lora.as_ref(), base_rows, cols, row0, rows, dt);
                let backend = self.backend;
                let finite = match backend.quant_tile(&tile, &spec, buf.as_deref_mut(), &mut am)? {
                    Some(finite) => finite,
                    None => {
                        self.f32s.resize(len, 0.0);
                        let finite = if dt == FloatDtype::F32 && cfg!(target_endian = "little") {
                            // f32 results are already the values: merged straight into them.
                            backend.merge_tile(&tile, crate::sys::f32_bytes_mut(&mut self.f32s))?
                        } else {
                            let mut bytes = std::mem::take(&mut self.bytes);
                            bytes.resize(len * dt.size(), 0);
                            let finite = backend.merge_tile(&tile, &mut bytes)?;
                            let (f32s, b) = (&mut self.f32s, &bytes);
                            on_pool(backend.host_pool(), move || {
                                f32s.par_chunks_mut(1 << 16)
                                    .zip(b.par_chunks(dt.size() << 16))
                                    .for_each(|(o, b)| decode_into(b, dt, o))
                            });
                            self.bytes = bytes;
                            finite
                        };
                        self.host_quant(&spec, k0, len, buf, &mut am);
                        finite
                    }
                };
                release.run();
                finite
            }
            Op::Compute { extra: Some(x), .. } => {
                let finite = self.general_values(key, op, x, TileRows { cols, row0, rows }, pre_round)?;
                self.host_quant(&spec, k0, len, buf, &mut am);
                finite
            }
            _ => {
                return Err(Error::Internal(format!(
                    "`{}`: quant source is not a compute op",
                    g.name
                )))
            }
        };
        match &mut self.absmax {
            Some((gi, v)) if *gi == group && row0 != 0 => v.extend_from_slice(&am),
            slot => *slot = Some((group, am)),
        }
        Ok(finite)
    }

    /// The host's requantization of the `len` values in `self.f32s` (flat elements `k0..`): the
    /// block absmax values into `am` and, with `buf`, the packed codes.
    pub(super) fn host_quant(&self, spec: &QuantSpec, k0: usize, len: usize, buf: Option<&mut [u8]>, am: &mut [f32]) {
        let (n, bs, qt) = (spec.numel as usize, spec.blocksize, spec.quant_type);
        // Blocks per parallel task: big enough to amortize the task, small enough to balance.
        // Even, so every task but the last covers whole bytes of packed codes.
        const TASK: usize = 256;
        let partial = |j: usize| k0 + j * bs + bs > n && !n.is_multiple_of(bs);
        let x = &self.f32s[..len];
        on_pool(self.backend.host_pool(), || match buf {
            Some(buf) => {
                let pad = encode::zero_code(qt);
                x.par_chunks(bs * TASK)
                    .zip(buf.par_chunks_mut(bs * TASK / 2))
                    .zip(am.par_chunks_mut(TASK))
                    .enumerate()
                    .for_each_init(Vec::new, |codes, (t, ((xs, out), ams))| {
                        codes.resize(xs.len(), 0);
                        for (j, ((b, c), a)) in xs.chunks(bs).zip(codes.chunks_mut(bs)).zip(ams).enumerate() {
                            *a = encode::quantize_block(b, partial(t * TASK + j), qt, c);
                        }
                        encode::pack(codes, pad, out);
                    });
            }
            None => x
                .par_chunks(bs * TASK)
                .zip(am.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(t, (xs, ams))| {
                    for (j, (b, a)) in xs.chunks(bs).zip(ams).enumerate() {
                        *a = encode::block_absmax(b, partial(t * TASK + j));
                    }
                }),
        });
    }

    /// All block absmax values of a group (recomputed unless the codes pass just made them).
    pub(super) fn group_absmax(&mut self, group: usize, tile_bytes: usize) -> Result<Vec<f32>> {
        let g = &self.plan.quant_groups[group];
        if let Some((gi, v)) = &self.absmax {
            if *gi == group && v.len() as u64 == g.blocks() {
                return Ok(v.clone());
            }
        }
        for (row0, n) in tiles(g.shape[0], g.shape[1], g.row_step(), tile_bytes) {
            self.quant_codes(group, row0, n as usize, None)?;
        }
        Ok(self.absmax.as_ref().map(|a| a.1.clone()).unwrap_or_default())
    }

    /// The bytes of a 4-bit helper tensor.
    pub(super) fn quant_part(&mut self, group: usize, part: QuantPart, tile_bytes: usize) -> Result<Vec<u8>> {
        let g = &self.plan.quant_groups[group];
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        Ok(match part {
            QuantPart::Codes => return Err(Error::Internal("codes are tiled".into())),
            QuantPart::QuantMap => le(&encode::code_table(g.quant_type)),
            QuantPart::NestedMap => le(&encode::dynamic_map()),
            QuantPart::State => g.state_json().into_bytes(),
            QuantPart::NestedAbsmax => le(&g
                .stats
                .as_ref()
                .ok_or_else(|| Error::Internal(format!("`{}`: no stats", g.name)))?
                .nested_absmax),
            QuantPart::Absmax => {
                let double = g.double_quant;
                let stats = g.stats.clone();
                let am = self.group_absmax(group, tile_bytes)?;
                if !double {
                    le(&am)
                } else {
                    let st = stats.ok_or_else(|| Error::Internal("double quant without stats".into()))?;
                    let coder = encode::DynamicCoder::new(&encode::dynamic_map());
                    // On the host pool: 108 M blocks on an 8B model.
                    const PIECE: usize = 1 << 16;
                    let mut out = vec![0u8; am.len()];
                    on_pool(self.backend.host_pool(), || {
                        out.par_chunks_mut(PIECE)
                            .zip(am.par_chunks(PIECE))
                            .enumerate()
                            .for_each(|(c, (o, a))| {
                                for (j, (o, &a)) in o.iter_mut().zip(a).enumerate() {
                                    let b = c * PIECE + j;
                                    *o = coder.code((a - st.offset) / st.nested_absmax[b / 256]);
                                }
                            })
                    });
                    out
                }
            }
        })
    }
}

/// The stats pass of `merged_4bit`: for every double-quantized weight, the block absmax values,
/// their mean (the offset) and the nested absmax. Fills the plan and lays it out again, since
/// the quant-state JSON's length depends on the offset.
pub fn quant_stats(plan: &mut Plan, inputs: Inputs<'_>, backend: &dyn Backend, cfg: ExecConfig) -> Result<()> {
    let mut all = Vec::new();
    {
        let mut c = Computer::new(plan, inputs, backend);
        for (gi, g) in plan.quant_groups.iter().enumerate() {
            if !g.double_quant {
                continue;
            }
            let am = c.group_absmax(gi, cfg.tile_bytes)?;
            let offset = encode::torch_mean(&am);
            let nested: Vec<f32> = am
                .chunks(256)
                .map(|ch| ch.iter().fold(0f32, |m, &a| m.max((a - offset).abs())))
                .collect();
            all.push((
                gi,
                QuantStats {
                    offset,
                    nested_absmax: nested,
                },
            ));
            c.absmax = None;
        }
    }
    for (gi, st) in all {
        plan.quant_groups[gi].stats = Some(st);
    }
    plan.relayout();
    Ok(())
}

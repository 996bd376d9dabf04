//! The op for one output tensor: a byte copy, the fast path (one plain Linear LoRA, through a
//! `Backend`), or the general path (chains of deltas with PEFT's rounding per kind, DoRA,
//! replaced rows); and the counts of each.

use super::types::{BaseSrc, DeltaSrc, Extra, FactorSrc, FileRef, LoraSrc, Op, PlanCounts, Src};
use crate::format::dtype::{float_of, st_dtype, FloatDtype};
use crate::format::safetensors::{Dtype, TensorInfo};

/// What happens to one base (or new) output tensor.
#[derive(Debug, Default)]
pub(super) struct Recipe {
    /// Embedding-style deltas first (PEFT merges modules in registration order and the input
    /// embedding precedes the head), then Linear ones.
    pub deltas: Vec<(u8, DeltaSrc)>,
    pub magnitude: Option<TensorInfo>,
    pub rows: Option<(Vec<u64>, TensorInfo)>,
    pub replace: Option<TensorInfo>,
}

pub(super) fn factor(info: &TensorInfo, transpose: bool) -> Option<FactorSrc> {
    Some(FactorSrc::Tensor {
        dtype: float_of(info.dtype)?,
        info: info.clone(),
        transpose,
    })
}


/// Chooses the op for one output tensor: a byte copy, the fast LoRA path, or the general path.
pub(super) fn build_op(
    base: BaseSrc,
    own: Option<FloatDtype>,
    mut recipe: Recipe,
    dtype: Option<FloatDtype>,
    counts: &mut PlanCounts,
) -> (Op, Dtype) {
    let Some(own) = own else {
        counts.copied += 1;
        let BaseSrc::Float(src, _) = base else {
            unreachable!("non-float bases are never 4-bit")
        };
        let dt = src.info.dtype;
        return (Op::Copy(src), dt);
    };
    let out = dtype.unwrap_or(own);
    // modules_to_save: the trained copy replaces the base tensor.
    let base = match recipe.replace.take() {
        Some(t) => {
            let fd = float_of(t.dtype).unwrap_or(FloatDtype::F32);
            BaseSrc::Float(
                Src {
                    file: FileRef::Adapter,
                    info: t,
                },
                fd,
            )
        }
        None => base,
    };
    recipe.deltas.sort_by_key(|(order, _)| *order);
    let plain = recipe.deltas.is_empty() && recipe.magnitude.is_none() && recipe.rows.is_none();
    if plain {
        return match base {
            BaseSrc::Float(src, fd) if fd == out => {
                counts.copied += 1;
                (Op::Copy(src), st_dtype(out))
            }
            BaseSrc::Float(..) => {
                counts.converted += 1;
                (
                    Op::Compute {
                        base,
                        lora: None,
                        extra: None,
                    },
                    st_dtype(out),
                )
            }
            BaseSrc::Bnb(_) => {
                counts.dequantized += 1;
                (
                    Op::Compute {
                        base,
                        lora: None,
                        extra: None,
                    },
                    st_dtype(out),
                )
            }
        };
    }
    counts.merged += 1;
    // The fast path: one plain Linear LoRA, factors as stored.
    if recipe.magnitude.is_none() && recipe.rows.is_none() && recipe.deltas.len() == 1 {
        if let (
            _,
            DeltaSrc {
                coef:
                    FactorSrc::Tensor {
                        info: b,
                        transpose: false,
                        dtype: bdt,
                    },
                basis:
                    FactorSrc::Tensor {
                        info: a,
                        transpose: false,
                        ..
                    },
                r,
                scale,
                round_delta,
            },
        ) = &recipe.deltas[0]
        {
            if round_delta.is_none() || *round_delta == Some(*bdt) {
                let lora = LoraSrc {
                    a: a.clone(),
                    b: b.clone(),
                    r: *r,
                    scale: *scale,
                    dtype: *bdt,
                };
                return (
                    Op::Compute {
                        base,
                        lora: Some(lora),
                        extra: None,
                    },
                    st_dtype(out),
                );
            }
        }
    }
    let extra = Extra {
        deltas: recipe.deltas.into_iter().map(|(_, d)| d).collect(),
        magnitude: recipe.magnitude,
        rows: recipe.rows,
        work_dtype: own,
    };
    (
        Op::Compute {
            base,
            lora: None,
            extra: Some(Box::new(extra)),
        },
        st_dtype(out),
    )
}

//! The plan of a `lora` save: the adapter file itself, cast when the job asks for a dtype.

use super::layout::layout;
use super::types::{rows_cols, BaseSrc, FileRef, LayoutArgs, Op, OutTensor, Plan, PlanCounts, Src};
use crate::checkpoint::Adapter;
use crate::format::dtype::{float_of, st_dtype};
use crate::job::{Job, ShardOrder};

/// Plans the adapter file of a `lora` save (cast when `dtype` is given).
pub fn plan_adapter(adapter: &Adapter, job: &Job) -> Plan {
    let dtype = job.dtype;
    let mut counts = PlanCounts::default();
    let tensors = adapter
        .weights
        .header
        .tensors
        .iter()
        .map(|t| {
            let src = Src {
                file: FileRef::Adapter,
                info: t.clone(),
            };
            let (op, dt) = match (float_of(t.dtype), dtype) {
                (Some(fd), Some(want)) if fd != want => {
                    counts.converted += 1;
                    (
                        Op::Compute {
                            base: BaseSrc::Float(src, fd),
                            lora: None,
                            extra: None,
                        },
                        st_dtype(want),
                    )
                }
                _ => {
                    counts.copied += 1;
                    (Op::Copy(src), t.dtype)
                }
            };
            let (rows, cols) = rows_cols(&t.shape);
            OutTensor {
                name: t.name.clone(),
                dtype: dt,
                shape: t.shape.clone(),
                nbytes: t.numel() * dt.bits() / 8,
                rows,
                cols,
                op,
                params: t.numel(),
                shard: 0,
                offset: 0,
                gguf: None,
            }
        })
        .collect();
    layout(
        job,
        tensors,
        LayoutArgs::new(u64::MAX, ShardOrder::Natural, "adapter_model", None),
        dtype,
        counts,
    )
}

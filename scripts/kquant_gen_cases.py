#!/usr/bin/env python3
"""Deterministic generator of the k-quant test INPUTS (rows of 256 f32) for tests/fixtures/gguf/kquant_*.

Only the inputs come from here; the expected Q4_K/Q5_K/Q6_K blocks come from llama.cpp's C reference quantizers,
run by scripts/make_kquant_fixtures.sh (which calls this script). Needs numpy (2.2.6 was used; numpy's
Generator streams are not promised to be bit-stable across versions, so the committed kquant_cases.bin, with its
sha256 in kquant_cases.json, is the ground truth -- `make_kquant_fixtures.sh --inputs FILE` reuses it).

Usage: kquant_gen_cases.py OUT_CASES.bin OUT_CATEGORIES.json
"""
import json
import sys

import numpy as np

QK = 256
SEED = 0x6B5155  # "kQU"


def main() -> None:
    out_bin, out_json = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(SEED)
    rows: list[np.ndarray] = []
    cats: list[dict] = []

    def add(name: str, note: str, block: np.ndarray, extreme: bool = False) -> None:
        block = np.asarray(block, dtype=np.float32).reshape(-1, QK)
        assert np.all(np.isfinite(block)), name
        first = sum(len(r) for r in rows)
        rows.append(block)
        c = {"name": name, "first_row": first, "n_rows": int(block.shape[0]), "note": note}
        if extreme:
            c["extreme"] = True
        cats.append(c)

    f32 = np.float32

    # 1. normal data at several scales
    for s in (1e-3, 0.02, 1.0, 100.0):
        add(f"normal_scale_{s:g}", f"N(0, {s:g}^2)", rng.standard_normal((16, QK)) * s)

    # 2. LLM-weight-like
    b = rng.standard_normal((40, QK)) * 0.02
    for r in range(40):
        k = 1 + r % 4
        idx = rng.choice(QK, size=k, replace=False)
        b[r, idx] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.2, 1.5, size=k)
    add("llm_normal_outliers", "N(0, 0.02^2) with 1-4 outliers of magnitude 0.2..1.5 (10x-75x sigma)", b)
    add("llm_student_t3", "0.02 * Student-t(3): heavy tails", rng.standard_t(3, (12, QK)) * 0.02)

    # 3. all-zero rows
    z = np.zeros((4, QK), dtype=f32)
    z[2, :] = -0.0
    z[3, 1::2] = -0.0
    add("all_zero", "rows 0-1: +0.0; row 2: all -0.0; row 3: alternating +0.0/-0.0", z)

    # 4. one or two nonzero values
    b = np.zeros((16, QK), dtype=f32)
    pos = [0, 1, 15, 16, 31, 32, 63, 64, 100, 127, 128, 191, 200, 240, 254, 255]
    mags = [1.0, -1.0, 0.02, -0.02, 7.5, -7.5, 1e-3, -1e-3, 100.0, -100.0, 3e-5, -3e-5, 6e4, -6e4, 0.5, -0.5]
    for r in range(16):
        b[r, pos[r]] = mags[r]
    add("one_nonzero", "exactly one nonzero value; positions/values vary per row", b)
    b = np.zeros((16, QK), dtype=f32)
    for r in range(16):
        i, j = rng.choice(QK, size=2, replace=False)
        if r < 4:  # same sub-block of 16
            i = 16 * (r + 3); j = i + 5 + r
        v = rng.standard_normal(2) * 10.0 ** rng.integers(-3, 3)
        if r % 4 == 1:
            v[1] = -v[0]
        if r % 4 == 2:
            v[1] = v[0]
        b[r, i], b[r, j] = v
    add("two_nonzero", "exactly two nonzero values (rows 0-3 in the same 16-sub-block; some +-equal)", b)

    # 5. constant sub-blocks
    b = np.repeat(rng.standard_normal((10, QK // 32)), 32, axis=1)
    b[5:] = np.abs(b[5:])
    add("const_subblocks32", "each 32-value sub-block constant (rows 5-9 non-negative)", b)
    b = np.repeat(rng.standard_normal((10, QK // 16)) * 0.05, 16, axis=1)
    b[::3] = -np.abs(b[::3])
    add("const_subblocks16", "each 16-value sub-block constant (rows 0,3,6,9 non-positive)", b)
    add("const_row", "whole row one value", np.array([1.0, -1.0, 0.02, -0.02, 1234.5, 1e-3])[:, None] * np.ones((1, QK)))

    # 6. tiny values
    b = []
    b += [rng.standard_normal(QK) * 1e-20 for _ in range(4)]
    b += [np.abs(rng.standard_normal(QK)) * 1e-20, -np.abs(rng.standard_normal(QK)) * 1e-20]
    for amax in (0.5e-15, 0.99e-15, 1e-15, 1.01e-15, 2e-15, 1e-14):
        v = rng.uniform(-1, 1, QK)
        v = v / np.max(np.abs(v)) * amax
        b.append(v)
    # per-sub-block amax straddling GROUP_MAX_EPS: even 16-sub-blocks below, odd above
    v = rng.uniform(-1, 1, QK)
    for sb in range(16):
        s = v[16 * sb:16 * sb + 16]
        v[16 * sb:16 * sb + 16] = s / np.max(np.abs(s)) * (0.9e-15 if sb % 2 == 0 else 1.1e-15)
    b.append(v)
    v = rng.standard_normal(QK)  # mixed: one sub-block normal, the rest below eps
    v[16:] *= 1e-16
    b.append(v)
    b += [rng.standard_normal(QK) * 1e-30 for _ in range(2)]  # x*x underflows to 0 in f32
    b += [rng.standard_normal(QK) * 1e-10 for _ in range(2)]
    add("tiny", "1e-20 (mixed/positive/negative), amax ~ GROUP_MAX_EPS=1e-15 (0.5,0.99,1,1.01,2,10 x1e-15), "
        "sub-blocks straddling 1e-15, one normal sub-block + rest 1e-16, 1e-30 (x^2 underflows), 1e-10", np.array(b))
    b = [rng.standard_normal(QK) * 1e-40 for _ in range(2)]
    b += [np.full(QK, 1e-45), np.where(np.arange(QK) % 2 == 0, 1e-45, -1e-45)]
    add("f32_subnormal_inputs", "f32 subnormal inputs (1e-40 normals; +-1e-45 = smallest subnormal): "
        "15/(max-min) overflows to inf inside make_qkx2_quants -> nearest_int(inf or nan)", np.array(b), extreme=True)
    add("f16_subnormal_or_zero_d", "N(0, s^2), s = 1e-4,1e-5,1e-6,1e-7 (3 rows each): f16 d/dmin subnormal or 0",
        np.concatenate([rng.standard_normal((3, QK)) * s for s in (1e-4, 1e-5, 1e-6, 1e-7)]))

    # 7. large values
    b = [rng.standard_normal(QK) * 1e4 for _ in range(6)]
    b += [rng.uniform(-6e4, 6e4, QK) for _ in range(6)]
    b += [np.abs(rng.uniform(0, 6e4, QK)), -np.abs(rng.uniform(0, 6e4, QK))]
    b += [np.where(np.arange(QK) % 2 == 0, 65504.0, -65504.0), np.full(QK, 65504.0)]
    v = rng.uniform(-65504, 65504, QK); v[7] = 65504.0; v[200] = -65504.0; b.append(v)
    v = rng.standard_normal(QK) * 1e-3; v[0] = 6e4; b.append(v)  # one huge value + small ones
    v = rng.standard_normal(QK) * 1e-2; v[::32] = 3e4; b.append(v)
    v = rng.standard_normal(QK); v[:16] *= 5e4; b.append(v)
    add("large", "N(0,1e4^2) x6, U(-6e4,6e4) x6, one-signed U(0,6e4) x2, +-65504 patterns x3, huge+small mixes x3",
        np.array(b))
    b = []
    for s in (1e5, 1e6, 1e7, 1e8):
        b += [rng.standard_normal(QK) * s, rng.uniform(0, s, QK)]
    add("f16_scale_overflow", "N(0,s^2) and U(0,s), s = 1e5..1e8: Q4_K/Q5_K d,dmin and Q6_K d may round to f16 inf "
        "(finite inputs; the reference does not guard this)", np.array(b), extreme=True)

    # 8. one-signed rows
    b = []
    for r in range(16):
        s = [1.0, 0.02, 1e-3, 100.0][r % 4]
        v = np.abs(rng.standard_normal(QK)) * s
        if r >= 8:
            v = v + s * 5  # strictly positive with an offset: min > 0 -> clamped to 0 in make_qkx2_quants
        b.append(v)
    add("positive_only", "|N(0,s^2)| (rows 0-7) and |N| + 5s (rows 8-15), s cycles 1,0.02,1e-3,100", np.array(b))
    add("negative_only", "-(same construction as positive_only, fresh draws)",
        -np.array([np.abs(rng.standard_normal(QK)) * [1.0, 0.02, 1e-3, 100.0][r % 4] + ([1.0, 0.02, 1e-3, 100.0][r % 4] * 5 if r >= 8 else 0) for r in range(16)]))

    # 9. exact ties for nearest_int (round-half-to-even via the 1.5*2^23 trick)
    b = []
    # Q6_K: first stage iscale = -32/max; with max = -32 it is exactly 1, and half-integers tie
    for r in range(6):
        v = rng.integers(-32, 32, QK).astype(np.float64) + 0.5
        v = np.clip(v, -31.5, 30.5)
        for sb in range(16):
            v[16 * sb + (r + sb) % 16] = -32.0 if r % 2 == 0 else 32.0
        b.append(v * 2.0 ** (r - 3))  # power-of-two rescale keeps the ties exact
    # Q6_K final stage: sub-block 0 = integers * c with an element -32c (c = 2^e) -> its scale is exactly c and
    # the largest; sub-blocks 1..15 = half-integers * q (q = c*m/128) with one -32q anchor, whose fitted scale
    # rounds to the int8 scale -m, so d = f16(-c/128) * -m = q exactly and x/d lands on .5
    for r, (m, e) in enumerate(((4, 0), (8, -3), (12, 0), (16, -3), (20, 0), (24, -3), (8, 2), (16, 0))):
        c = 2.0 ** e
        q = c * m / 128
        v = np.empty(QK)
        a = rng.integers(-32, 32, 16).astype(np.float64)
        a[r % 16] = -32.0
        v[:16] = a * c
        for sb in range(1, 16):
            y = np.clip(rng.integers(-32, 32, 16) + 0.5, -31.5, 30.5)
            y[(5 * sb + r) % 16] = -32.0
            v[16 * sb:16 * sb + 16] = y * q
        b.append(v)
    # Q4_K/Q5_K: non-negative rows, min clamps to 0; c = 63/64 makes d = f16(max_scale/63) * 63 exact
    c = 63.0 / 64.0
    for nmax in (15, 31):
        for r in range(5):
            v = rng.integers(0, nmax + 1, QK).astype(np.float64)
            for sb in range(8):
                v[32 * sb] = 0.0
                v[32 * sb + 1] = nmax
            if r >= 1:
                v[34:] += 0.5 * (np.arange(QK - 34) % 2)
                v = np.clip(v, 0, nmax)
            b.append(v * c * 2.0 ** (r - 2))
    # plain grids: multiples of 0.5 and 0.25 with various maxima (exact ties in several stages)
    for m in (15, 31, 32, 63, 127, 7.5, 16, 1):
        v = rng.integers(-2 * m, 2 * m + 1, QK).astype(np.float64) / 2.0
        v[5] = m
        b.append(v)
    for r in range(6):
        v = rng.integers(-8, 9, QK).astype(np.float64) * 0.25
        if r % 2:
            v = np.abs(v)
        b.append(v * 2.0 ** (r - 4))
    add("ties", "grids of integers/half-integers (x 2^k, x 63/64) built so iscale*x or x/d lands exactly on .5 in "
        "nearest_int (which rounds half to even); see tie counts in kquant_cases.json", np.array(b))

    # 10. random fill
    add("uniform_pm1", "U(-1,1)", rng.uniform(-1, 1, (10, QK)))
    b = []
    for r in range(16):
        sc = 10.0 ** rng.uniform(-4, 2, 16)
        b.append(rng.standard_normal(QK) * np.repeat(sc, 16))
    add("mixed_subblock_scales", "each 16-value sub-block N(0, s^2) with s = 10^U(-4,2): small sub-blocks get 6-bit "
        "scale 0 (the 'if (!d) continue' paths)", np.array(b))
    b = rng.standard_normal((12, QK))
    for r in range(12):
        b[r, rng.random(QK) < (0.5 + 0.04 * r)] = 0.0
    add("sparse", "N(0,1) with 50%..94% of entries zeroed", b)
    bits = []
    for r in range(12):
        e = rng.integers(127 - 30, 127 + 20, QK)
        m = rng.integers(0, 1 << 23, QK)
        s = rng.integers(0, 2, QK)
        bits.append(((s << 31) | (e << 23) | m).astype(np.uint32))
    add("random_bits", "random f32 bit patterns, exponent in [2^-30, 2^20)", np.array(bits).view(np.float32))
    add("small_integers", "integers in [-8, 7]", rng.integers(-8, 8, (8, QK)))
    b = []
    for r in range(8):
        v = rng.standard_normal(QK) * 1e-3
        sb = r * 2
        v[16 * sb:16 * sb + 16] = rng.standard_normal(16) * 10.0 ** (r % 4)
        b.append(v)
    add("one_loud_subblock", "N(0,1e-3^2) with one 16-value sub-block of N(0, (10^(r%4))^2)", np.array(b))

    allrows = np.concatenate(rows).astype("<f4")
    assert allrows.shape[1] == QK and np.all(np.isfinite(allrows))
    allrows.tofile(out_bin)
    with open(out_json, "w") as f:
        json.dump({"rows": int(allrows.shape[0]), "seed": SEED, "numpy": np.__version__, "categories": cats}, f, indent=1)
    print(f"wrote {allrows.shape[0]} rows to {out_bin}", file=sys.stderr)


if __name__ == "__main__":
    main()

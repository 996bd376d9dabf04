#!/usr/bin/env python3
"""Runs kernels/kquant.ptx in an emulator, one thread per block, and compares its blocks with the
CPU encoder's (the cases `examples/kquant-cases.rs` writes). CI has no GPU: this checks the
kernels' arithmetic, their NaN and infinity behaviour and the alignment of every vector and
scalar memory access against the CPU, as far as an emulator of the PTX can.

It interprets the PTX instructions the kernels use, with the GPU's semantics where they differ
from the host's: every NaN an f32 operation makes is 0x7FFFFFFF (x86 makes 0xFFC00000), each
f32 operation rounds once (numpy float32), subnormals are kept (no .ftz anywhere), and a memory
access off its natural alignment (v2: 8 bytes, v4: 16) is an error, as on the device.

    python3 kernels/kquant_emu.py CASES_DIR      # numpy needed; exit 1 if a block differs

scripts/kquant-emulate.sh makes the cases and runs it (CI's "ptx" step).
"""
import re, sys
import numpy as np

np.seterr(all="ignore")
F = np.float32


def fb(b):
    return np.array([b & 0xFFFFFFFF], dtype=np.uint32).view(np.float32)[0]


def bf(x):
    x = np.float32(x)
    if np.isnan(x):
        return 0x7FFFFFFF
    return int(np.array([x], dtype=np.float32).view(np.uint32)[0])


def parse(ptx, entry):
    lines = ptx.split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith(".visible .entry " + entry + "("))
    body = []
    depth = 0
    for l in lines[start:]:
        l = l.split("//")[0].strip()
        if l == "{":
            depth += 1
            continue
        if l == "}":
            break
        if depth and l and not l.startswith(".reg") and not l.startswith(".local") and not l.startswith(".param"):
            body.append(l)
    return body


class Thread:
    def __init__(self, inp, out, nblocks, kind, ctaid, tid):
        self.r = {}
        self.inp = inp
        self.out = out
        self.local = {}
        self.params = {"p_in": 1 << 40, "p_out": 2 << 40, "p_nblocks": nblocks, "p_kind": kind}
        self.special = {"%ctaid.x": ctaid, "%ntid.x": 128, "%tid.x": tid}
        self.localbase = {"sub": 1 << 20, "codes": 2 << 20}

    def val(self, o):
        o = o.strip()
        if o.startswith("%"):
            if o in self.special:
                return self.special[o]
            return self.r[o]
        if o.startswith("0f"):
            return int(o[2:], 16)
        if o in self.localbase:
            return self.localbase[o]
        return int(o) & 0xFFFFFFFFFFFFFFFF

    def gload(self, addr, n):
        base = 1 << 40
        off = addr - base
        return self.inp[off:off + n]

    def gstore(self, addr, data):
        off = addr - (2 << 40)
        self.out[off:off + len(data)] = data


def addr_of(t, m, align=1):
    a = _addr_of(t, m)
    assert a % align == 0, f"misaligned {m} = {a:#x} (needs {align})"
    return a


def _addr_of(t, m):
    m = m.strip()[1:-1]
    if "+" in m:
        a, b = m.split("+")
        return t.val(a) + int(b)
    return t.val(m)


def s32(x):
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def run(body, t):
    labels = {}
    prog = []
    for l in body:
        if l.endswith(":"):
            labels[l[:-1]] = len(prog)
        else:
            prog.append(l.rstrip(";"))
    pc = 0
    steps = 0
    r = t.r
    while pc < len(prog):
        ins = prog[pc]
        pc += 1
        steps += 1
        pred = None
        if ins.startswith("@"):
            p, ins = ins.split(None, 1)
            neg = p.startswith("@!")
            pv = r[p[2:] if neg else p[1:]]
            if pv == neg:
                continue
        op, _, rest = ins.partition(" ")
        rest = rest.strip()
        if op in ("bra", "bra.uni"):
            pc = labels[rest]
            continue
        if op == "ret":
            return steps
        # operands, keeping {..} groups
        rest = re.sub(r"\s*,\s*", ",", rest)
        ops = [x.strip() for x in re.findall(r"\{[^}]*\}|\[[^\]]*\]|[^,]+", rest)]
        d = ops[0]
        a = ops[1:]
        if op.startswith("ld.param"):
            r[d] = t.params[a[0][1:-1]]
        elif op.startswith("cvta"):
            r[d] = t.val(a[0])
        elif op.startswith("mov"):
            if d.startswith("{"):
                v = t.val(a[0])
                regs = [x.strip() for x in d[1:-1].split(",")]
                r[regs[0]] = v & 0xFFFF
                r[regs[1]] = (v >> 16) & 0xFFFF
            elif a[0].startswith("{"):
                regs = [x.strip() for x in a[0][1:-1].split(",")]
                r[d] = (t.val(regs[0]) & 0xFFFF) | ((t.val(regs[1]) & 0xFFFF) << 16)
            else:
                r[d] = t.val(a[0])
        elif op in ("add.rn.f32", "sub.rn.f32", "mul.rn.f32", "div.rn.f32"):
            x, y = fb(t.val(a[0])), fb(t.val(a[1]))
            z = {"add.rn.f32": lambda: x + y, "sub.rn.f32": lambda: x - y, "mul.rn.f32": lambda: x * y,
                 "div.rn.f32": lambda: x / y}[op]()
            r[d] = bf(z)
        elif op == "sqrt.rn.f32":
            r[d] = bf(np.sqrt(fb(t.val(a[0]))))
        elif op == "abs.f32":
            v = t.val(a[0])
            x = fb(v)
            r[d] = 0x7FFFFFFF if np.isnan(x) else v & 0x7FFFFFFF
        elif op == "neg.f32":
            v = t.val(a[0])
            x = fb(v)
            r[d] = 0x7FFFFFFF if np.isnan(x) else v ^ 0x80000000
        elif op.startswith("setp.") and op.endswith(".f32"):
            cmp = op.split(".")[1]
            x, y = fb(t.val(a[0])), fb(t.val(a[1]))
            if cmp == "lt":
                v = bool(x < y)
            elif cmp == "gt":
                v = bool(x > y)
            elif cmp == "eq":
                v = bool(x == y)
            elif cmp == "neu":
                v = bool(np.isnan(x) or np.isnan(y) or x != y)
            elif cmp == "nan":
                v = bool(np.isnan(x) or np.isnan(y))
            else:
                raise ValueError(op)
            if op == "setp.gt.and.f32":
                v = bool(x > y) and r[a[2]]
            r[d] = v
        elif op.startswith("setp.") and op.endswith(".u32"):
            cmp = op.split(".")[1]
            x, y = t.val(a[0]) & 0xFFFFFFFF, t.val(a[1]) & 0xFFFFFFFF
            r[d] = {"lt": x < y, "le": x <= y, "ne": x != y, "ge": x >= y}[cmp]
        elif op.startswith("selp"):
            r[d] = t.val(a[0]) if r[a[2]] else t.val(a[1])
        elif op == "and.b32":
            r[d] = t.val(a[0]) & t.val(a[1]) & 0xFFFFFFFF
        elif op == "or.b32":
            r[d] = (t.val(a[0]) | t.val(a[1])) & 0xFFFFFFFF
        elif op == "shl.b32":
            r[d] = (t.val(a[0]) << t.val(a[1])) & 0xFFFFFFFF
        elif op == "shr.u32":
            r[d] = (t.val(a[0]) & 0xFFFFFFFF) >> t.val(a[1])
        elif op == "shr.s32":
            r[d] = (s32(t.val(a[0])) >> t.val(a[1])) & 0xFFFFFFFF
        elif op in ("sub.s32", "sub.u32"):
            r[d] = (t.val(a[0]) - t.val(a[1])) & 0xFFFFFFFF
        elif op in ("add.s32", "add.u32"):
            r[d] = (t.val(a[0]) + t.val(a[1])) & 0xFFFFFFFF
        elif op == "add.u64":
            r[d] = (t.val(a[0]) + t.val(a[1])) & 0xFFFFFFFFFFFFFFFF
        elif op == "max.s32":
            r[d] = max(s32(t.val(a[0])), s32(t.val(a[1]))) & 0xFFFFFFFF
        elif op == "min.s32":
            r[d] = min(s32(t.val(a[0])), s32(t.val(a[1]))) & 0xFFFFFFFF
        elif op == "min.u32":
            r[d] = min(t.val(a[0]) & 0xFFFFFFFF, t.val(a[1]) & 0xFFFFFFFF)
        elif op == "mad.lo.u32":
            r[d] = (t.val(a[0]) * t.val(a[1]) + t.val(a[2])) & 0xFFFFFFFF
        elif op == "mul.wide.u32":
            r[d] = (t.val(a[0]) & 0xFFFFFFFF) * (t.val(a[1]) & 0xFFFFFFFF)
        elif op == "cvt.u64.u32":
            r[d] = t.val(a[0]) & 0xFFFFFFFF
        elif op == "cvt.rn.f32.s32":
            r[d] = bf(F(s32(t.val(a[0]))))
        elif op == "cvt.rn.f32.u32":
            r[d] = bf(F(t.val(a[0]) & 0xFFFFFFFF))
        elif op == "cvt.f32.f16":
            h = np.array([t.val(a[0]) & 0xFFFF], dtype=np.uint16).view(np.float16)[0]
            r[d] = bf(np.float32(h))
        elif op == "cvt.rn.f16.f32":
            x = fb(t.val(a[0]))
            r[d] = 0x7FFF if np.isnan(x) else int(np.array([np.float16(x)], dtype=np.float16).view(np.uint16)[0])
        elif op == "ld.global.v4.u32":
            regs = [x.strip() for x in d[1:-1].split(",")]
            b = t.gload(addr_of(t, a[0], 16), 16)
            for k, rg in enumerate(regs):
                r[rg] = int.from_bytes(b[4 * k:4 * k + 4], "little")
        elif op.startswith("st.global"):
            ad = addr_of(t, d, {"st.global.v4.u32": 16, "st.global.u16": 2}.get(op, 1))
            src = a[0]
            if op == "st.global.v4.u32":
                regs = [x.strip() for x in src[1:-1].split(",")]
                t.gstore(ad, b"".join((t.val(x) & 0xFFFFFFFF).to_bytes(4, "little") for x in regs))
            elif op == "st.global.u16":
                t.gstore(ad, (t.val(src) & 0xFFFF).to_bytes(2, "little"))
            elif op == "st.global.u8":
                t.gstore(ad, bytes([t.val(src) & 0xFF]))
            else:
                raise ValueError(op)
        elif op.startswith("st.local"):
            ad = addr_of(t, d, 16 if "v4" in op else 1)
            src = a[0]
            if op == "st.local.u8":
                t.local[ad] = t.val(src) & 0xFF
            elif op in ("st.local.v4.f32",):
                regs = [x.strip() for x in src[1:-1].split(",")]
                for k, rg in enumerate(regs):
                    t.local[ad + 4 * k] = t.val(rg) & 0xFFFFFFFF
            else:
                raise ValueError(op)
        elif op.startswith("ld.local"):
            ad = addr_of(t, a[0], {"ld.local.f32": 4, "ld.local.v2.f32": 8}.get(op, 1))
            if op == "ld.local.u8":
                r[d] = t.local.get(ad, 0)
            elif op == "ld.local.f32":
                r[d] = t.local[ad]
            elif op == "ld.local.v2.f32":
                regs = [x.strip() for x in d[1:-1].split(",")]
                r[regs[0]] = t.local[ad]
                r[regs[1]] = t.local[ad + 4]
            else:
                raise ValueError(op)
        else:
            raise ValueError("unknown op " + op)
    return steps


ENTRIES = {"Q4K": ("kquant_q4_k", 144), "Q5K": ("kquant_q5_k", 176), "Q6K": ("kquant_q6_k", 210)}


def main():
    cases = sys.argv[1]
    ptx = open(__file__.replace("kquant_emu.py", "kquant.ptx")).read()
    failed = 0
    for ty, (entry, bpb) in ENTRIES.items():
        body = parse(ptx, entry)
        for half in ("bf16", "f16"):
            inp = open(f"{cases}/{ty}-{half}.in", "rb").read()
            want = open(f"{cases}/{ty}-{half}.want", "rb").read()
            nb = len(inp) // 512
            bad = []
            for b in range(nb):
                out = bytearray(nb * bpb)
                t = Thread(inp, out, nb, int(half == "f16"), b // 128, b % 128)
                run(body, t)
                got, exp = bytes(out[b * bpb:(b + 1) * bpb]), want[b * bpb:(b + 1) * bpb]
                if got != exp:
                    first = next(i for i in range(bpb) if got[i] != exp[i])
                    bad.append(f"block {b} byte {first}: {got[first:first + 8].hex()} != {exp[first:first + 8].hex()}")
            print(f"kquant_emu: {entry} from {half}: {nb} blocks, {len(bad)} differ" + "".join("\n    " + x for x in bad))
            failed += len(bad)
    sys.exit(1 if failed else 0)


main()

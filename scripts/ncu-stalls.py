#!/usr/bin/env python3
"""Stall samples of an Nsight Compute source export by region (prologue / k loop / after), and
the instructions with the most samples:

    ncu --import r.ncu-rep --page source --csv --print-source sass > src.csv
    python3 scripts/ncu-stalls.py src.csv [N]

The regions are split at the first and last FFMA (the lean kernel's k loop)."""
import csv,sys
rows=list(csv.reader(open(sys.argv[1])))
hdr=rows[1]; data=rows[2:]
ix={h:i for i,h in enumerate(hdr)}
def n(r,k):
    try: return float(r[ix[k]])
    except: return 0.0
tot=sum(n(r,'Warp Stall Sampling (All Samples)') for r in data)
srcs=[r[ix['Source']].strip() for r in data]
ff=[i for i,s in enumerate(srcs) if s.startswith('FFMA')]
print('total samples', tot, 'instrs', len(data), 'ffma range', ff[0], ff[-1])
regions=[('prologue',0,ff[0]),('kloop',ff[0],ff[-1]+1),('after',ff[-1]+1,len(data))]
keys=['stall_long_sb','stall_short_sb','stall_wait','stall_barrier','stall_not_selected','stall_selected','stall_dispatch','stall_math','stall_mio','stall_no_inst','stall_lg']
for name,a,b in regions:
    seg=data[a:b]
    s=sum(n(r,'Warp Stall Sampling (All Samples)') for r in seg)
    ex=sum(n(r,'Instructions Executed') for r in seg)
    print(f"{name:9s} samples {s:7.0f} ({100*s/tot:4.1f}%) inst {ex/1e6:6.2f}M", {k[6:]:int(sum(n(r,k) for r in seg)) for k in keys})
top=sorted(range(len(data)), key=lambda i:-n(data[i],'Warp Stall Sampling (All Samples)'))[:int(sys.argv[2]) if len(sys.argv)>2 else 25]
for i in top:
    r=data[i]
    print(i, srcs[i][:58], int(n(r,'Warp Stall Sampling (All Samples)')), 'ex',int(n(r,'Instructions Executed')), {k[6:]:int(n(r,k)) for k in keys if n(r,k)>=10 and k!='stall_selected'})

import pickle, sys
st = pickle.load(open(sys.argv[1], "rb"))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
S, P = st["stock"], st["patched"]
print("per submit, by thread (ms CPU as yappi sees it):")
for k in sorted(set(S["threads"]) | set(P["threads"])):
    s = S["threads"].get(k, 0) / S["n"] * 1e3; p = P["threads"].get(k, 0) / P["n"] * 1e3
    print(f"  {k:40s} stock {s:9.3f}  patched {p:9.3f}  diff {(p - s) * 1e3:+9.1f} us")
print("functions whose own time (tsub) grew most, per submit (us):")
keys = set(S["funcs"]) | set(P["funcs"])
rows = []
for k in keys:
    s = S["funcs"].get(k, [0, 0, 0]); p = P["funcs"].get(k, [0, 0, 0])
    rows.append(((p[1] / P["n"] - s[1] / S["n"]) * 1e6, (p[0] / P["n"] - s[0] / S["n"]) * 1e6, p[2] / P["n"], s[2] / S["n"], k))
rows.sort(reverse=True)
for d, dt, pc, sc, k in rows[:top]:
    print(f"  tsub {d:+8.1f} ttot {dt:+8.1f} calls/submit {sc:6.2f}->{pc:6.2f}  {k[0]:18s} {k[1]}")
print("patched-only functions by ttot (us per submit):")
only = [(P["funcs"][k][0] / P["n"] * 1e6, P["funcs"][k][2] / P["n"], k) for k in P["funcs"] if k not in S["funcs"]]
only.sort(reverse=True)
for t, c, k in only[:top]:
    print(f"  {t:8.1f} calls/submit {c:5.2f} {k[0]:18s} {k[1]}")

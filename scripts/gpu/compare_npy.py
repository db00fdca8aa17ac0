# Row-wise relative L2 of two [rows, vocab] .npy logit files: compare_npy.py GOT WANT
import sys, numpy as np
got, want = np.load(sys.argv[1]), np.load(sys.argv[2])
rows = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
print(f"shape {got.shape} {got.dtype}; row relative L2 median {np.median(rows):.3e} max {rows.max():.3e}")

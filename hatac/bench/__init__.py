"""``hatac bench``: GPU benchmarks against the dense baseline in the same run: one decode step's kernels
(:mod:`.kernels`), whole-model decode tokens/s (:mod:`.generate`), tensor parallel (:mod:`.tp`)."""

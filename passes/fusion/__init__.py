"""Recipe fusions over the rewritten graph (saved with the artifact): the encode step and cache writes,
sibling linears stacked into one GEMM."""

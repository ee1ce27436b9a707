"""The Triton cache_attention (flash forward bounded by query positions) against the reference."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, torch
    from hatac import reference as ref
    from hatac.kernels.cache_attention import cache_attention
    torch.manual_seed(0)
    cases = [(2, 4, 2, 5, 40, 16, 0, torch.float32), (1, 2, 1, 17, 70, 32, 9, torch.float32),
             (2, 4, 1, 3, 33, 64, 0, torch.bfloat16), (1, 3, 3, 1, 50, 16, 0, torch.float16),
             # one query row: the split-K dense decode (sparse kernel, dense mode), with and without a window
             (3, 8, 2, 1, 300, 32, 0, torch.float32), (2, 4, 2, 1, 150, 16, 40, torch.float32), (2, 4, 1, 1, 97, 64, 0, torch.bfloat16)]
    for b, hq, hkv, s, t, d, window, dt in cases:
        q, k, v = (torch.randn(*sh).to(dt) for sh in [(b, hq, s, d), (b, hkv, t, d), (b, hkv, t, d)])
        pos = torch.randint(0, t, (b, s))
        if s == 1:
            pos[0] = t - 1  # a full row next to partial ones
        out = cache_attention(q, k, v, pos, 0.3, window)
        want = ref.cache_attention(q.float(), k.float(), v.float(), pos, 0.3, window)
        err = ((out.float() - want).norm() / want.norm()).item()
        assert err < (1e-5 if dt == torch.float32 else 1e-2), (b, hq, s, t, d, window, dt, err)
    print("ok")
    """
)


def test_cache_attention_kernel_matches_reference_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]

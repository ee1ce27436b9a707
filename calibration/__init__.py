"""Learning HATA's hash projections: collect (query, key) pairs, train W per layer, measure recall@k.

- collect.py: PairCollector, a bounded per-layer sample of post-RoPE queries and key blocks.
- labels.py: HATA's pair labels (top 10% by q.k weighted 20..1, others -1), computed on demand.
- train.py: the paper's loss (and a listwise variant), SGD with early stopping on held-out recall.
- metrics.py: recall of the true top-k under the exact decode selection (hatac.reference).
- calibrate.py: calibrate() over layers, random_weights() baseline, CalibrationResult.
- synthetic.py: structured synthetic q/k for tests and the learned-vs-random benchmark.
"""

from . import learned as _learned  # noqa: F401  (registers the "learned" hash method; calibrate registers "random")
from .calibrate import CalibrationResult, calibrate, evaluate_weights, random_weights
from .collect import PairBatch, PairCollector, PromptBlock
from .labels import hata_labels
from .metrics import recall_at_k
from .train import TrainConfig, TrainResult, train_layer

__all__ = [
    "CalibrationResult",
    "PairBatch",
    "PairCollector",
    "PromptBlock",
    "TrainConfig",
    "TrainResult",
    "calibrate",
    "evaluate_weights",
    "hata_labels",
    "random_weights",
    "recall_at_k",
    "train_layer",
]

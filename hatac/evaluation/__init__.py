"""``hatac eval``: how well each token-selection method keeps the model's accuracy.

- policies.py: the methods (oracle, hatac hashing, Quest, Loki, StreamingLLM), one selection API on
  ``hatac.reference.select_topk`` so every method keeps the same number of tokens.
- policy_pass.py: the after-rewrite pass that routes each hashed layer's selection to a swappable policy.
- session.py: one converted model running every policy (dense, top-k one-pass, observe).
- recall.py, perplexity.py, passkey.py: three metrics; tasks.py (RULER-style prompts on real prose, and
  RULER's string-match scorer) and task_eval.py (greedy answers under each policy): the fourth.
- loki.py: Loki's PCA basis from calibration keys; learned.py: hatac's learned W per r (cached).
- run.py: ``run(...)`` and ``EvalSettings``; report.py: tables, JSON, plots.
"""

from hatac.evaluation.policies import HashPolicy, Loki, Oracle, Policy, Quest, StreamingLLM, select
from hatac.evaluation.policy_pass import Selector, UseSelectionPolicy
from hatac.evaluation.run import EvalSettings, run
from hatac.evaluation.session import EvalModel

__all__ = ["EvalModel", "EvalSettings", "HashPolicy", "Loki", "Oracle", "Policy", "Quest", "Selector", "StreamingLLM", "UseSelectionPolicy", "run", "select"]

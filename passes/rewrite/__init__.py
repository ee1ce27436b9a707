"""Conversion passes: find the attention sites, see through GQA expansion, pick each layer's policy, rewrite
attention into hatac ops, add the cache inputs and expose q/k for calibration."""

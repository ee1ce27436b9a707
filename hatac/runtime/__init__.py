"""What a converted model runs: the model wrapper (:mod:`.model`), its KV and hash-code cache (:mod:`.cache`) and
the static decode step, compiled and captured in a CUDA graph (:mod:`.decode_step`)."""

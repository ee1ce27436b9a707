"""Several GPUs: process groups (:mod:`.groups`), tensor-parallel sharding (:mod:`.tp`) and the all-reduce op
(:mod:`.allreduce`)."""

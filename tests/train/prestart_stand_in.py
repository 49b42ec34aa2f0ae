"""A stand-in for a training worker, named as one (it trains nothing): it waits for its spec as a prestarted
worker does (smoltune.train.worker.spec_path), then reports its process id and spec path as one step line."""

from __future__ import annotations

import json
import os
import sys

from smoltune.train.worker import STEP_PREFIX, spec_path

if __name__ == "__main__":
    # Its "imports" set a variable of their own, as scikit-learn's set KMP_DUPLICATE_LIB_OK.
    spec = spec_path(sys.argv[1], lambda: os.environ.setdefault("STAND_IN_IMPORTED", "1"))
    if spec is not None:
        print(STEP_PREFIX + json.dumps({"pid": os.getpid(), "spec": str(spec)}), flush=True)
    sys.exit(0)

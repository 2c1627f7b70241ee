"""The training program (run by torchrun: ``python -m worker.training.train``)."""

import logging
import os
import warnings

# Every rank imports the same stack and would print the same warnings (FutureWarnings of
# torch/transformers...): rank 0 alone shows them, once each. This runs before train.py's
# imports, which is when most of them are emitted.
if os.environ.get("RANK", "0") != "0":
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # DeepSpeed's own logger ("Setting accelerator to CPU"...) keeps its errors only; its level is
    # reset when DeepSpeed creates it, a filter is not.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)

"""The training program (run by torchrun: ``python -m worker.training.train``)."""

import logging
import os
import warnings

# Every rank imports the same stack and would print the same warnings (FutureWarnings of
# torch/transformers...): rank 0 alone shows them, once each. This runs before train.py's
# imports, which is when most of them are emitted.
REPLICA = os.environ.get("RANK", "0") != "0"
if REPLICA:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the Trainer's log_level_replica keeps it there
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar
    # DeepSpeed's own logger ("Setting accelerator to CPU"...) keeps its errors only; its level is
    # reset when DeepSpeed creates it, a filter is not.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)

_shown: set[tuple] = set()
_show = warnings.showwarning


def _show_once(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Rank 0 shows each distinct warning once. The "default" filter would do that, but every
    change of the filters (each ``catch_warnings`` block torch and accelerate enter around their
    calls) forgets what was shown, and a block with ``simplefilter("always")`` gets past the other
    ranks' "ignore": at ZeRO-3 one deprecation came back at every collective call."""
    key = (category, str(message), filename, lineno)
    if not REPLICA and key not in _shown:
        _shown.add(key)
        _show(message, category, filename, lineno, file, line)


warnings.showwarning = _show_once

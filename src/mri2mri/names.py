"""The default name of a run's checkpoints, from its contrasts.

Its own module because both the configuration (which fills in a run's name) and the run folder
(which spells its files) need it, and neither may import the other's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_RUN_NAME = "gan_t1_to_t2"  # the run name of the default contrasts (default_run_name)


def default_run_name(sources: Iterable[str], target: str) -> str:
    """The checkpoints' name for a run's contrasts when none is given: ``gan_t1_to_t2``,
    ``gan_t1_t1c_flair_to_t2``; every output, error and model card that names the checkpoint
    then says what the model reads."""
    words = ["".join(filter(str.isalnum, name.lower())) for name in (*sources, target)]
    return f"gan_{'_'.join(words[:-1])}_to_{words[-1]}"

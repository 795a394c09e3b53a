"""What ``python -m stage2_train`` accepts on its command line, so preflight refuses the rest before
``srun`` starts anything (TorchTitan would fail hours of queueing later, with a traceback per rank).

It takes TorchTitan's ``--section.key value`` overrides only; the usual guesses get the override
that does what they meant.
"""

from __future__ import annotations

import re

_OPTION = re.compile(r"--?[A-Za-z]")
"""An option, not a negative number given as a value."""

MEANT = {
    "--dataset": "--training.dataset_path DIR",
    "--data": "--training.dataset_path DIR",
    "--config": "--job.config_file FILE",
    "--output": "--job.dump_folder DIR",
    "--steps": "--training.steps N",
    "--batch-size": "--training.local_batch_size N",
}
"""Arguments people try (other tools', this project's other commands') -> the override they meant."""


def argument_problems(args: list[str]) -> list[str]:
    """One line per argument ``python -m stage2_train`` would refuse: an option without a section."""
    problems = []
    for token in args:
        name = token.split("=", 1)[0]
        if _OPTION.match(token) and "." not in name and name not in ("--help", "-h"):
            instead = MEANT.get(name, "--section.key value (python -m stage2_train --help lists the project's)")
            problems.append(f"{name} is not an argument of python -m stage2_train; it takes {instead}")
    return problems

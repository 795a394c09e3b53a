"""``python -m stage2_train --help``: the project's own options in a screenful, not TorchTitan's ~880 lines.

The options and their help are read from ``stage2_train.job_config`` (its field docstrings), so this
help cannot drift from the config; TorchTitan's full help stays one flag away (``TITAN_HELP``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

from stage2_train import job_config

TITAN_HELP = "--help-torchtitan"
HELP_FLAGS = ("--help", "-h")

USAGE = """\
usage: python -m stage2_train --job.config_file FILE --training.dataset_path DATASET [--section.key value …]
       (on a cluster: sbatch slurm/train.sbatch with the same arguments; one process per GPU via torchrun)

Trains the Flux transformer on a Stage 1 dataset with TorchTitan. Every key of the TOML config can be
overridden as --section.key value. The keys a first run touches:

  --job.config_file FILE            configs/flux_schnell.toml (production) or configs/flux_tiny.toml
  --training.dataset_path DIR       the Stage 1 dataset (python -m shared.inspect_shards DIR)
  --job.dump_folder DIR             checkpoints, TensorBoard, wandb offline files, sample images
  --training.steps N  --training.local_batch_size N  --checkpoint.enable  --metrics.enable_wandb

The project's own options (beside TorchTitan's):
"""


def project_help() -> str:
    """The usage text and one entry per option of the project's config sections."""
    lines = [USAGE]
    for section in dataclasses.fields(job_config.JobConfig):
        cls = section.default_factory
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  --{section.name}.{f.name} (default {default!r})")
            if docs.get(f.name):
                lines.append(textwrap.fill(docs[f.name], width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    lines.append(f"\nTorchTitan's full help (every section and key): python -m stage2_train {TITAN_HELP}")
    return "\n".join(lines)


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string right under a field), whitespace collapsed."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        ):
            docs[node.target.id] = " ".join(str(following.value.value).replace("``", "").split())  # no reST markup
    return docs


def printed_help(argv: list[str]) -> bool:
    """Print the project's help for ``--help`` (True); TorchTitan's parser prints its own for
    ``TITAN_HELP`` and exits; False: no help was asked for."""
    if TITAN_HELP in argv:
        from torchtitan.config import ConfigManager

        ConfigManager().parse_args(["--help"])
    if any(a in HELP_FLAGS for a in argv):
        print(project_help())
        return True
    return False

"""``python -m stage2_train --job.config_file configs/flux_tiny.toml [--section.key value …]``

``--help`` is answered before TorchTitan and torch are imported (seconds saved on every look)."""

import sys

from stage2_train.cli.help import printed_help

if not printed_help(sys.argv[1:]):
    from stage2_train.launch import main

    main()

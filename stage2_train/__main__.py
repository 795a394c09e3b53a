"""``python -m stage2_train --job.config_file configs/flux_tiny.toml [--section.key value …]``"""

from stage2_train.launch import main

main()

"""Check in seconds what would otherwise fail a long Slurm job hours in; print one table, exit 1 on any FAIL.

    python -m shared.preflight --stage encode --input TARS --output DATASET --assets DIR [--config FILE]
        [--hash] [--section.key value …]            the arguments of python -m stage1_encode
    python -m shared.preflight --stage train --config FILE [--dataset DIR] [--output DUMP_FOLDER]
        [--section.key value …]                     TorchTitan's overrides, as python -m stage2_train

Every check is a small function that returns one ``Row`` (``table``); ``stages`` picks the checks of a
stage. Nothing hashes the 10 GB of weights unless ``--hash`` asks: digests come from the cache that
``shared.encoders.asset_hashes`` keeps.
"""

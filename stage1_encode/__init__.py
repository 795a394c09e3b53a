"""Stage 1: encode CC12M once — one verified, atomically committed Zarr store per input tar.

Reads as its pipeline, one module per job:

    __main__ / pipeline  ``python -m stage1_encode``: one array task, from arguments to committed stores
    config               the TOML config and ``--section.key value`` overrides
    sources / tars       which tars this task takes (local or hf://) and reading their samples
    decode / captions    image decode, filter, resize, crop; caption checks and tokenizing
    prepare              decode workers (processes) feeding batches
    asset_loading        the assets directory: checks, hashes, T5/CLIP and tokenizers (the AE: shared.ae)
    encode / t5_fused    T5-XXL, CLIP-L and the AE encoder on the GPU (T5 with fused projections)
    scheduler            slots and feeders: which tar is encoded next, overlapping decode, encode, write
    writer               store-writer processes: checksums, verify, commit
    identity             every identity Stage 1 builds (full, --text-from, prompt sets), written once
    dataset_setup        compute settings, the empty prompt's encodings
    cleanup              stale temporaries and shared-memory buffers of killed tasks
    text_from            --text-from: the ladder's image-only encode, paired by key with a text dataset
    progress / skips     heartbeats and the task's result; Skip and SkipReason
    prompts              ``python -m stage1_encode.prompts``: prompt sets for Stage 2's sample images
    preflight            ``python -m stage1_encode.preflight``: GPUs, inputs, assets, space
    errors               Stage1Error: a failure the user can act on, as one line
"""

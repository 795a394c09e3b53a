"""The dataset format both stages read and write, and what reads it for a person (inspect). Knows no stage.

    contract        array names, shapes, dtypes, identity, layout, version: the on-disk format
    store           the atomic Zarr store writer and the verifying reader
    atomic          atomic file replacement and the fsyncs a crash-safe commit needs
    checksums       per-array value checksums
    pairing         an image-only dataset's text half: finding it, checking it
    progress        what a dataset holds and how far Stage 1 got (completeness), from attributes and heartbeats
    heartbeat       Stage 1 tasks' heartbeat files
    tasks           which tars an array task takes
    torch_storage   bf16 <-> stored uint16
    units           sizes, counts, rates, durations
    ae              the FLUX autoencoder from ``ae.safetensors`` (encode in Stage 1, decode for grids)
    latent_grid     decode latents with a dataset's AE into a captioned grid (inspect, Stage 2's images)
    inspect_shards + inspection/   ``python -m shared.inspect_shards``: summary, samples, grid, verify
"""

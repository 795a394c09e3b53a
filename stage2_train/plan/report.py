"""The planner's table: one plan (``stage2_train.plan``'s dict) for a person to read."""

from __future__ import annotations

from typing import Any

from shared.units import size

GIB = 2**30


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def print_plan(r: dict[str, Any]) -> None:
    a = r["assumptions"]
    state = r["state_bytes_per_rank"]
    print(f"{r['flavor']} at {r['image_size']} px, HSDP {r['replicate']} x {r['shard']} ({r['gpus_per_node']} GPUs per node); "
          f"per rank: parameters {size(state['parameters'])}, gradients {size(state['gradients'])}, "
          f"optimizer state {size(state['optimizer_state'])}")  # fmt: skip
    print(f"{'AC mode':<14}{'peak at batch 1':>16}{'per sample at large batch':>27}")
    for mode, m in r["modes"].items():
        name = mode + (f" {m['selective_ac_option']}" if m["selective_ac_option"] else "")
        at_one = max(a + b for a, b in m["peak_lines"])
        print(f"{name:<14}{at_one / GIB:>12.2f} GiB{m['peak_lines'][-1][1] / GIB:>23.2f} GiB")
    for g in r["gpus"]:
        print(f"\n{g['gpu_gib']:.1f} GiB GPUs: a step may peak at {g['usable_bytes'] / GIB:.1f} GiB "
              f"({a['headroom_share']:.0%} headroom + {a['fragmentation_gib']} GiB allocator margin)")  # fmt: skip
        print(f"  {'AC mode':<12}{'largest batch':>14}{'peak there':>12}{'samples/s/GPU':>15}")
        for mode, m in g["modes"].items():
            print(f"  {mode:<12}{m['largest_batch']:>14}{_gib(m['peak_bytes'] and m['peak_bytes'] / GIB):>12}"
                  f"{m['samples_per_s_per_gpu']:>15.1f}")  # fmt: skip
        pick = g["pick"]
        option = f" --activation_checkpoint.selective_ac_option {pick['selective_ac_option']}" if pick["selective_ac_option"] else ""
        print(f"  pick: --activation_checkpoint.mode {pick['mode']}{option} --training.local_batch_size {pick['batch']}")
        if pick["confirmed"]:
            c = pick["confirmed"]
            kinds = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in c["at_peak_gib"].items())
            print(f"  confirmed by a step at that batch: peak {c['peak_gib']:.1f} GiB in {c['peak_phase']} ({kinds} GiB; "
                  f"all-gathered parameters {c['gathered_gib']:.1f} GiB of the temporaries)")  # fmt: skip
        print(f"  dataset read at the pick's rate: {size(g['read_bytes_per_s_per_node'])}/s per node")
    w = r["wire_per_rank_per_step"]
    print(f"\nper rank per step: all-gather {size(w['all_gather_bytes'])} + reduce-scatter {size(w['reduce_scatter_bytes'])} "
          f"inside the node ({w['nvlink_s']:.3f} s at {a['nvlink_gbps']:.0f} GB/s), all-reduce {size(w['all_reduce_bytes'])} "
          f"across nodes ({w['network_s']:.3f} s for the node at {a['network_gbps']:.0f} GB/s)")  # fmt: skip
    ck = r["checkpoint_bytes"]
    print(f"checkpoint: {size(ck['per_rank'])} per rank, {size(ck['full'])} in all; model only {size(ck['model_only'])}")
    rd = r["read"]
    print(f"dataset: {size(rd['bytes_per_sample'])} per sample ({rd['source']})")
    print(f"roofline: {a['mfu']:.1%} MFU of {a['peak_tflops']:.0f} TFLOP/s, {r['flops_per_sample'] / 1e12:.1f} TFLOP per sample, "
          "AC recompute counted, communication overlapped with compute (only what exceeds it is exposed); "
          f"fake step: {r.get('step_model', 'eager blocks')} (FP8 not modelled)")  # fmt: skip

"""How early ``slurm/train.sbatch`` must be warned before its time limit (``--signal=B:USR1@LEAD``).

    python -m bench.checkpoint.lead --checkpoint-gb 143 --nodes 2 --node-gbps 2 [--rank-gbps R] [--step-s 15]

After SIGUSR1 every rank finishes its step, then the stop checkpoint must be on disk before the limit.
Worst case the signal comes as an interval save starts: that save (asynchronous: still writing in the
background; synchronous: blocking) finishes first, then the stop save writes the whole state again.
A save writes each shard once (DCP drops the replicas' duplicates and splits the writing between
them), so a node writes ``total / nodes``; its time is bound by the node's share of the filesystem
(``--node-gbps``) or by each rank's own write rate (``--rank-gbps``: ``write_gb_per_s`` of
``python -m bench.checkpoint``), whichever is slower:

    save = max(total / nodes / node_gbps, total / nodes / ranks_per_node / rank_gbps)
    lead = step + 2 x save + exit        (exit: processes end, the batch shell requeues)
"""

from __future__ import annotations

import argparse
import math


def save_seconds(checkpoint_gb: float, nodes: int, node_gbps: float, rank_gbps: float | None = None, ranks_per_node: int = 8) -> float:
    per_node = checkpoint_gb / nodes
    filesystem = per_node / node_gbps
    return max(filesystem, per_node / ranks_per_node / rank_gbps) if rank_gbps else filesystem


def signal_lead_seconds(save_s: float, step_s: float, exit_s: float) -> float:
    return step_s + 2 * save_s + exit_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.checkpoint.lead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--checkpoint-gb", type=float, default=143.0, help="full checkpoint (flux-schnell: fp32 weights + AdamW)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--node-gbps", type=float, default=2.0, help="one node's write rate to the checkpoint filesystem")
    p.add_argument("--rank-gbps", type=float, help="one rank's write rate (bench.checkpoint's write_gb_per_s)")
    p.add_argument("--ranks-per-node", type=int, default=8)
    p.add_argument("--step-s", type=float, default=15.0, help="longest step, validation included")
    p.add_argument("--exit-s", type=float, default=60.0)
    a = p.parse_args(argv)
    save = save_seconds(a.checkpoint_gb, a.nodes, a.node_gbps, a.rank_gbps, a.ranks_per_node)
    lead = math.ceil(signal_lead_seconds(save, a.step_s, a.exit_s))
    print(f"{a.checkpoint_gb / a.nodes:.1f} GB per node, save {save:.1f} s; lead >= {a.step_s:g} + 2 x {save:.1f} + "
          f"{a.exit_s:g} = {lead} s: sbatch --signal=B:USR1@{lead}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

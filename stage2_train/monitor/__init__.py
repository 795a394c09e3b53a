"""What a run reports: metrics per step, the log filter, wandb mode."""

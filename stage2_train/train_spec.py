"""The TrainSpec ``--model.name flux_precomputed`` selects: TorchTitan's Flux model (on compact text with
padded T5 keys masked, ``model.masked_attention``), optimizer, LR schedule and MSE loss; our flavors,
parallelisation, data loader, sample-based metrics and validator (stored encodings instead of
TorchTitan's online encoders); no tokenizer, no encoders."""

from __future__ import annotations

from torchtitan.components.loss import build_mse_loss
from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import build_optimizers
from torchtitan.models.flux.model.state_dict_adapter import FluxStateDictAdapter
from torchtitan.protocols.train_spec import TrainSpec, register_train_spec

import stage2_train.model.float8  # noqa: F401  (registers the "float8" model converter)
from stage2_train.data.loader import build_precomputed_dataloader
from stage2_train.infra.parallelize import parallelize_precomputed_flux
from stage2_train.model.flavors import FLAVORS
from stage2_train.model.masked_attention import build_flux_model
from stage2_train.monitor.metrics import build_sample_metrics_processor
from stage2_train.validation.validator import build_precomputed_validator

MODEL_NAME = "flux_precomputed"

register_train_spec(
    MODEL_NAME,
    TrainSpec(
        model_cls=build_flux_model,  # type: ignore[arg-type]  (called as model_cls(model_args))
        model_args=FLAVORS,
        parallelize_fn=parallelize_precomputed_flux,
        pipelining_fn=None,
        build_optimizers_fn=build_optimizers,
        build_lr_schedulers_fn=build_lr_schedulers,
        build_dataloader_fn=build_precomputed_dataloader,
        build_tokenizer_fn=None,
        build_loss_fn=build_mse_loss,
        build_metrics_processor_fn=build_sample_metrics_processor,
        build_validator_fn=build_precomputed_validator,
        state_dict_adapter=FluxStateDictAdapter,
    ),
)

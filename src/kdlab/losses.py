"""The distillation losses as a plain library: functions on tensors, with the references' defaults.

No config, trainer or probe object is needed: pass logits, features or banks and get the loss back, in
the dtype of the inputs (float64 in, float64 out; float32 stays float32; bf16/fp16 are computed in float32).
Every name here is the function the training modules call (re-exported from the plugin modules of
:mod:`kdlab.distillers` and from :mod:`kdlab.objectives.contrastive`), so a value checked here is the
value training uses. docs/METHODS.md ("The losses as a library") lists conventions and references.

    >>> import torch
    >>> from kdlab.losses import kd_loss
    >>> kd_loss(torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)).dtype
    torch.float64
"""

from __future__ import annotations

from kdlab.distillers._common import standardize_logits
from kdlab.distillers.ab import ab_loss
from kdlab.distillers.at import at_loss
from kdlab.distillers.cc import cc_loss
from kdlab.distillers.cocord import info_nce, prediction_distance
from kdlab.distillers.crd import crd_nce_loss, nce_loss
from kdlab.distillers.ctkd import (
    ctkd_instance_kl,
    ctkd_instance_loss,
    ctkd_lambda,
    ctkd_loss,
    ctkd_temperature,
    grad_reverse,
)
from kdlab.distillers.dkd import dkd_loss, dkd_parts
from kdlab.distillers.fitnet import hint_loss as fitnet_loss
from kdlab.distillers.fsp import fsp_loss
from kdlab.distillers.ft import ft_loss
from kdlab.distillers.kd import kd_loss
from kdlab.distillers.kdsvd import kdsvd_loss
from kdlab.distillers.nst import nst_loss
from kdlab.distillers.ofd import ofd_loss, ofd_margin
from kdlab.distillers.pkt import pkt_loss
from kdlab.distillers.reviewkd import hcl_loss
from kdlab.distillers.rkd import rkd_loss, rkd_losses
from kdlab.distillers.sp import sp_loss
from kdlab.distillers.vid import vid_loss
from kdlab.objectives.contrastive import intra_class_loss, supcon_loss

__all__ = [
    "kd_loss", "dkd_loss", "dkd_parts", "rkd_loss", "rkd_losses", "at_loss", "sp_loss", "pkt_loss",
    "fitnet_loss", "crd_nce_loss", "nce_loss", "info_nce", "prediction_distance", "intra_class_loss",
    "supcon_loss", "standardize_logits", "ctkd_loss", "ctkd_temperature", "ctkd_lambda", "grad_reverse",
    "ctkd_instance_loss", "ctkd_instance_kl",
    "ab_loss", "cc_loss", "fsp_loss", "ft_loss", "kdsvd_loss", "nst_loss", "vid_loss", "ofd_loss", "ofd_margin",
    "hcl_loss",
]

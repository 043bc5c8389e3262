"""Self-supervised losses, each a small ``nn.Module``, called in one of two ways.

**Embedding losses**, ``loss(z, y=None)``: NTXentLoss, DecoupledNTXentLoss, YAwareLoss,
ThresholdLoss, ExponentialLoss, SupConLoss, EpsSupInfoNCELoss, EpsSupConLoss, BarlowTwinsLoss,
VICRegLoss.

- ``z``: (N, V, D) embeddings of N subjects in V views, always three-dimensional (a 2-D ``z``
  is refused; two (N, D) views are ``torch.stack([z1, z2], dim=1)``). Barlow Twins and VICReg
  need V = 2, the others V >= 2 (the class-label losses V >= 1).
- ``y``: (N,) labels, one per subject (repeated over its views inside the loss), or None.
  The label losses require it and refuse NaN or inf labels; NT-Xent, decoupled NT-Xent, Barlow
  Twins and VICReg ignore its values, so a method can call every embedding loss alike. A ``y``
  that is given must hold N labels, whichever the loss.

**Prediction losses**, ``loss(predictions, targets)``: BYOLLoss, SimSiamLoss, DINOLoss.

- ``predictions``: (N, V_p, D), what the trained branch outputs for each view (BYOL's and
  SimSiam's predictor, DINO's student head).
- ``targets``: (N, V_t, D), what the other branch outputs (BYOL's target network, SimSiam's
  projector, DINO's teacher), for the first V_t views of ``predictions`` in the same order.
  Targets receive no gradient (each loss detaches them).
- Each prediction is scored against the targets of the *other* views only. BYOL and SimSiam
  take V_p = V_t = 2; DINO V_p >= V_t, the extra student views being local crops.

Every loss returns a 0-dim tensor, float32 for float32, bfloat16 or float16 input (computed in
float32, but for the cross-correlation products of BarlowTwinsLoss on large bfloat16 batches)
and float64 for float64 input. The contrastive losses L2-normalise ``z`` themselves.
``alignment`` and ``uniformity`` are diagnostics, not losses: they take (N, D) tensors.
"""

from medssl.losses.barlow_twins import BarlowTwinsLoss
from medssl.losses.byol import BYOLLoss
from medssl.losses.decoupled import DecoupledNTXentLoss
from medssl.losses.diagnostics import alignment, uniformity
from medssl.losses.dino import DINOLoss
from medssl.losses.exponential import ExponentialLoss
from medssl.losses.fairkl import FairKLLoss
from medssl.losses.kernels import KERNELS, label_kernel
from medssl.losses.layout import LossInputError
from medssl.losses.ntxent import NTXentLoss
from medssl.losses.simsiam import SimSiamLoss
from medssl.losses.supcon import EpsSupConLoss, EpsSupInfoNCELoss, SupConLoss
from medssl.losses.threshold import ThresholdLoss
from medssl.losses.vicreg import VICRegLoss
from medssl.losses.yaware import YAwareLoss

__all__ = [
    "KERNELS",
    "BYOLLoss",
    "BarlowTwinsLoss",
    "DINOLoss",
    "DecoupledNTXentLoss",
    "EpsSupConLoss",
    "EpsSupInfoNCELoss",
    "ExponentialLoss",
    "FairKLLoss",
    "LossInputError",
    "NTXentLoss",
    "SimSiamLoss",
    "SupConLoss",
    "ThresholdLoss",
    "VICRegLoss",
    "YAwareLoss",
    "alignment",
    "label_kernel",
    "uniformity",
]

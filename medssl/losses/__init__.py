"""Self-supervised losses. Each is a small ``nn.Module`` called as ``loss(z, y=None)``.

``z`` holds N subjects in V views, either (N*V, D) view-major (rows v*N .. v*N+N-1 are view v)
or (N, V, D); labels ``y`` have shape (N,). Every contrastive loss L2-normalises ``z``
itself and returns a 0-dim float32 tensor (float64 for float64 input).
"""

from medssl.losses.barlow_twins import BarlowTwinsLoss
from medssl.losses.byol import BYOLLoss
from medssl.losses.decoupled import DecoupledNTXentLoss
from medssl.losses.diagnostics import alignment, uniformity
from medssl.losses.dino import DINOLoss
from medssl.losses.exponential import ExponentialLoss
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

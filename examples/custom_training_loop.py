"""Use medssl's pieces in your own training loop: cohort -> views -> MONAI encoder -> y-aware loss.

No medssl engine here: the loss is a plain ``nn.Module`` and the views are TorchIO
transforms, so each piece can be copied into an existing code base.

    python examples/custom_training_loop.py --steps 20
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from medssl.config import SyntheticCohortConfig, ViewsConfig
from medssl.data.cohort import load_cohort
from medssl.data.synthetic import embedded_cohort
from medssl.data.views import MultiViewDataset, build_view_transform, seed_worker
from medssl.losses import YAwareLoss
from medssl.models import ProjectionHead, build_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shape", type=int, default=32, help="edge of the synthetic volumes")
    parser.add_argument("--subjects", type=int, default=64, help="subjects of the synthetic cohort")
    args = parser.parse_args()
    torch.manual_seed(0)

    # Cohort: the embedded synthetic one (generated once into the cache), or load_cohort("/your/cohort").
    cohort = load_cohort(
        embedded_cohort(SyntheticCohortConfig(subjects=args.subjects, sites=4, external_sites=1, shape=args.shape))
    )
    train = cohort.subset("train")

    # Views: two random TorchIO views per subject, cutout of a quarter of each edge.
    views = ViewsConfig(cutout={"p": 1.0, "size": (0.25, 0.25)}, flip={"p": 0.5})
    dataset = MultiViewDataset(train.subjects(), build_view_transform(views), n_views=2, label_key="age")
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, worker_init_fn=seed_worker)

    # Encoder (MONAI ResNet-18, strided stem) + projection head, y-aware loss (Dufumier et al., MICCAI 2021).
    encoder = build_encoder("resnet18")
    head = ProjectionHead(encoder.feature_dim, hidden_dim=256, out_dim=64)
    loss_fn = YAwareLoss(temperature=0.1, sigma=5.0, kernel="rbf")
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=5e-4, weight_decay=5e-5)

    step = 0
    while step < args.steps:
        for batch in loader:
            v = batch["views"]  # (B, 2, 1, D, H, W)
            z = head(encoder(v.transpose(0, 1).flatten(0, 1)))  # (2B, d): all first views, then all second
            z = z.unflatten(0, (2, -1)).transpose(0, 1)  # (B, 2, d), as every embedding loss takes it
            loss = loss_fn(z, batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            print(f"step {step:3d}  loss {loss.item():.4f}")
            if step == args.steps:
                break


if __name__ == "__main__":
    main()

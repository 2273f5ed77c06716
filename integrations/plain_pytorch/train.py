"""Plain PyTorch (no Lightning Trainer): a CIFAR ResNet-18 trained on (purified) data with ECLIPSE's
corruption compensation, by driving `EclipseDataModule` by hand.

    python integrations/plain_pytorch/train.py --epochs 2                       # embedded CIFAR sample
    python integrations/plain_pytorch/train.py --train purified.beton --val cifar10:data/cifar10:test \
        --epochs 80 --device cuda

The DataModule yields ``(float images NCHW in [0, 1], int64 labels)`` on the CPU: FFCV loaders when ffcv
imports (betons are written to ``--cache-dir`` for non-beton sources), torch loaders otherwise
(``--backend torch`` forces them). Flip, translation and the compensation are redrawn every epoch, as a
function of ``(seed, epoch, sample)``, so the loop calls ``set_epoch`` before each epoch.

Without the DataModule, the same loader over in-memory data is::

    from eclipse_loader import AugmentConfig, TorchEpochLoader, load_source
    loader = TorchEpochLoader(load_source("npz:train.npz"), 128, augment=AugmentConfig(), shuffle=True, drop_last=True)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from eclipse_loader import EclipseDataModule
from eclipse_loader.recipes import RECIPES


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first conv and no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> float:
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        correct += int((model(images).argmax(1) == labels).sum())
        seen += len(labels)
    model.train()
    return correct / max(seen, 1)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default="embedded:train", help="beton path or source string (npz:, cifar10:, ...)")
    parser.add_argument("--val", default="embedded:test", help="clean evaluation data (same forms)")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--cosine", action="store_true", help="cosine-anneal the lr over --epochs (default: constant)")
    parser.add_argument("--no-compensation", action="store_true", help="train without the compensation (baseline)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="compensation settings: the 'default' recipe's or the 'paper' ones (eclipse_loader.recipes)")
    parser.add_argument("--backend", choices=["auto", "ffcv", "torch"], default="auto")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--cache-dir", default="~/.cache/eclipse-loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    # ---- data: the DataModule hooks, called by hand, in Lightning's order ----
    dm = EclipseDataModule(
        train=args.train, val=args.val, batch_size=args.batch_size, eval_batch_size=2 * args.batch_size,
        num_workers=args.num_workers, seed=args.seed, recipe=args.recipe, compensate=not args.no_compensation,
        backend=args.backend, cache_dir=args.cache_dir,
    )
    dm.prepare_data()  # writes betons for the FFCV backend (cached); nothing for the torch backend
    dm.setup("fit")
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    print(f"{dm.backend} loaders: {len(train_loader)} training batches of {args.batch_size}, {dm.num_classes} classes")

    # ---- model and optimiser: ECLIPSE's victim protocol ----
    model = resnet18_cifar(dm.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs) if args.cosine else None

    accuracy = 0.0
    try:
        for epoch in range(args.epochs):
            start = time.time()
            train_loader.set_epoch(epoch)  # order, flip/translate and compensation draws of this epoch
            total_loss = batches = 0
            for images, labels in train_loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss, batches = total_loss + loss.item(), batches + 1
            if scheduler is not None:
                scheduler.step()
            accuracy = evaluate(model, val_loader, device)
            print(f"epoch {epoch}: train_loss {total_loss / max(batches, 1):.4f}  val_acc {accuracy:.4f}  "
                  f"({time.time() - start:.1f}s)", flush=True)
    finally:
        dm.teardown("fit")  # stops the loaders' threads
    print(f"final val accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()

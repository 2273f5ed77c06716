"""CIFAR-10 training with FFCV, shaped like FFCV's own ``examples/cifar/train_cifar.py``, plus ECLIPSE's
corruption compensation (`CompensateFFCV`) in the training image pipeline.

The betons need the fields ``image`` (RGBImageField) and ``label`` (IntField), the layout FFCV's example
writes and ``eclipse-loader write-beton`` / ``eclipse-loader purify`` produce:

    eclipse-loader write-beton cifar10:data/cifar10:test cifar_test.beton
    python integrations/ffcv/train_cifar_ffcv.py --train-dataset cifar_train_purified.beton \
        --val-dataset cifar_test.beton --device cuda --epochs 80

Differences from FFCV's example: argparse instead of fastargs; ``--device cpu`` works (no hard-coded
``cuda:0``); ``--num-workers`` is clamped to the cores (FFCV raises above them); the model and optimiser
follow ECLIPSE's victim protocol (CIFAR ResNet-18, SGD lr 0.1, momentum 0.9, batch 128, constant lr)
and the augmentation is ECLIPSE's (flip, translate by 4, then the compensation; no Cutout).
The compensation's p_gray / sigma default to the ``default`` recipe's (`eclipse_loader.recipes`);
``--recipe paper`` gives the paper's, ``--p-gray`` / ``--sigma`` override either.
"""
from argparse import ArgumentParser
from typing import List
import time

import numpy as np
import torch as ch
import torchvision
from torch.nn import CrossEntropyLoss
from torch.optim import SGD, lr_scheduler
from tqdm import tqdm

from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline.operation import Operation
from ffcv.transforms import Convert, RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor, ToTorchImage
from ffcv.transforms.common import Squeeze

from eclipse_loader import CompensateFFCV
from eclipse_loader.adapters.ffcv_loaders import clamp_workers
from eclipse_loader.recipes import RECIPES, get_recipe

CIFAR_MEAN = [125.307, 122.961, 113.8575]  # 0-255 scale, as in FFCV's example
CIFAR_STD = [51.5865, 50.847, 51.255]


def make_dataloaders(args, device):
    """FFCV loaders for 'train' and 'test', and the compensation op (its epoch is set before each epoch)."""
    num_workers = clamp_workers(args.num_workers)  # at most the usable cores and numba's thread limit
    dtype = ch.float16 if device.type == 'cuda' else ch.float32
    compensation = CompensateFFCV(p_gray=args.p_gray, sigma=args.sigma, seed=args.seed)
    paths = {'train': args.train_dataset, 'test': args.val_dataset}
    loaders = {}
    for name in ['train', 'test']:
        label_pipeline: List[Operation] = [IntDecoder(), ToTensor(), ToDevice(device), Squeeze()]
        image_pipeline: List[Operation] = [SimpleRGBImageDecoder()]
        if name == 'train':
            image_pipeline.extend([
                RandomHorizontalFlip(),
                RandomTranslate(padding=args.translate_padding),  # zero fill, like RandomCrop(32, padding=4)
            ])
            if not args.no_compensation:
                image_pipeline.append(compensation)  # uint8 HWC in and out: after flip/translate, before ToTensor
        image_pipeline.extend([
            ToTensor(),
            ToDevice(device, non_blocking=True),
            ToTorchImage(),
            Convert(dtype),
            torchvision.transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ])
        ordering = OrderOption.RANDOM if name == 'train' else OrderOption.SEQUENTIAL
        loaders[name] = Loader(paths[name], batch_size=args.batch_size, num_workers=num_workers,
                               order=ordering, drop_last=(name == 'train'), seed=args.seed,
                               pipelines={'image': image_pipeline, 'label': label_pipeline})
    return loaders, compensation


def construct_model(device, num_classes=10):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = ch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = ch.nn.Identity()
    return model.to(device=device, memory_format=ch.channels_last)


def evaluate(model, loader, device):
    model.eval()
    total_correct, total_num = 0, 0
    with ch.no_grad(), ch.autocast(device.type, enabled=device.type == 'cuda'):
        for ims, labs in loader:
            total_correct += model(ims).argmax(1).eq(labs).sum().item()
            total_num += ims.shape[0]
    model.train()
    return 100.0 * total_correct / max(total_num, 1)


def train(model, loaders, compensation, args, device):
    opt = SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    iters_per_epoch = len(loaders['train'])
    if iters_per_epoch == 0:
        raise ValueError(f'the training beton has fewer samples than --batch-size {args.batch_size} (drop_last)')
    if args.lr_schedule == 'constant':  # ECLIPSE
        schedule = np.ones((args.epochs + 1) * iters_per_epoch)
    elif args.lr_schedule == 'triangle':  # FFCV's example: linear up to lr_peak_epoch, then down to 0
        schedule = np.interp(np.arange((args.epochs + 1) * iters_per_epoch),
                             [0, args.lr_peak_epoch * iters_per_epoch, args.epochs * iters_per_epoch], [0, 1, 0])
    else:  # step: x0.1 at each milestone
        epoch_of_iter = np.arange((args.epochs + 1) * iters_per_epoch) // iters_per_epoch
        schedule = 0.1 ** np.searchsorted(sorted(args.milestones), epoch_of_iter, side='right')
    scheduler = lr_scheduler.LambdaLR(opt, schedule.__getitem__)
    scaler = ch.amp.GradScaler(device.type, enabled=device.type == 'cuda')
    loss_fn = CrossEntropyLoss()

    for epoch in range(args.epochs):
        compensation.set_epoch(epoch)  # new grayscale/noise draws every epoch (FFCV passes no epoch to ops)
        model.train()
        for ims, labs in tqdm(loaders['train'], desc=f'epoch {epoch}', disable=not args.progress):
            opt.zero_grad(set_to_none=True)
            with ch.autocast(device.type, enabled=device.type == 'cuda'):
                loss = loss_fn(model(ims), labs)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scheduler.step()
        if (epoch + 1) % args.eval_every == 0 and epoch + 1 < args.epochs:  # the last epoch is evaluated below
            print(f'epoch {epoch}: loss {loss.item():.3f}, test accuracy {evaluate(model, loaders["test"], device):.2f}%',
                  flush=True)
        else:
            print(f'epoch {epoch}: loss {loss.item():.3f}', flush=True)


def parse_args(argv=None):
    parser = ArgumentParser(description='CIFAR-10 training on FFCV betons with ECLIPSE corruption compensation')
    data = parser.add_argument_group('data')
    data.add_argument('--train-dataset', required=True, help='training beton (fields image, label), e.g. purified')
    data.add_argument('--val-dataset', required=True, help='test beton (clean)')
    training = parser.add_argument_group('training')
    training.add_argument('--epochs', type=int, default=80)
    training.add_argument('--batch-size', type=int, default=128)
    training.add_argument('--lr', type=float, default=0.1)
    training.add_argument('--momentum', type=float, default=0.9)
    training.add_argument('--weight-decay', type=float, default=0.0)
    training.add_argument('--lr-schedule', choices=['constant', 'step', 'triangle'], default='constant')
    training.add_argument('--milestones', type=int, nargs='*', default=[80, 100], help='step schedule epochs')
    training.add_argument('--lr-peak-epoch', type=int, default=2, help='triangle schedule peak')
    training.add_argument('--num-workers', type=int, default=8, help='FFCV threads (clamped to the cores)')
    training.add_argument('--eval-every', type=int, default=5, help='print test accuracy every N epochs')
    training.add_argument('--seed', type=int, default=0, help='order and compensation seed')
    training.add_argument('--device', default='cuda' if ch.cuda.is_available() else 'cpu', help='cpu | cuda | cuda:N')
    training.add_argument('--progress', action='store_true', help='show a progress bar per epoch')
    aug = parser.add_argument_group('augmentation')
    aug.add_argument('--translate-padding', type=int, default=4)
    aug.add_argument('--recipe', choices=sorted(RECIPES), default='default',
                     help="defaults of --p-gray and --sigma: the 'default' recipe's or the 'paper' ones")
    aug.add_argument('--p-gray', type=float, default=None, help="compensation: grayscale probability (default: the recipe's)")
    aug.add_argument('--sigma', type=float, default=None,
                     help="compensation: noise std, [0, 1] pixel units (default: the recipe's)")
    aug.add_argument('--no-compensation', action='store_true', help='leave CompensateFFCV out (baseline)')
    args = parser.parse_args(argv)
    recipe = get_recipe(args.recipe)
    args.p_gray = recipe.p_gray if args.p_gray is None else args.p_gray
    args.sigma = recipe.sigma if args.sigma is None else args.sigma
    return args


if __name__ == '__main__':
    args = parse_args()
    device = ch.device(args.device)
    ch.manual_seed(args.seed)
    start_time = time.time()
    loaders, compensation = make_dataloaders(args, device)
    model = construct_model(device)
    train(model, loaders, compensation, args, device)
    print(f'Total time: {time.time() - start_time:.1f}s')
    print(f'test accuracy: {evaluate(model, loaders["test"], device):.2f}%')

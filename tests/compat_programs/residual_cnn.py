"""A small residual CNN trained for a few steps, written as a plain PyTorch script.

In-place ops everywhere a PyTorch user writes them: ``relu_()``, ``F.relu(inplace=True)``,
``nn.ReLU(inplace=True)``, ``out += identity``, and a feature vector assembled by slice
assignment into a preallocated tensor. Weights come from a NumPy RandomState so both
libraries start from the same point. Prints ``{"losses": [...]}`` as its last line.
"""
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
rs = np.random.RandomState(0)


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return out.relu_()


class ResNetTiny(nn.Module):
    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.fc = nn.Linear(2 * width, num_classes)
        self.width = width

    def forward(self, x):
        x = F.relu(self.stem(x), inplace=True)
        x = self.blocks(x)
        feats = torch.zeros(x.shape[0], 2 * self.width, dtype=x.dtype)
        feats[:, : self.width] = x.mean(dim=(2, 3))      # average pooling
        feats[:, self.width:] = x.amax(dim=(2, 3))       # max pooling
        return self.fc(feats)


model = ResNetTiny()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() > 1:
            fan_in = p[0].numel()
            p.copy_(torch.tensor(rs.normal(0.0, (1.0 / fan_in) ** 0.5, tuple(p.shape)), dtype=torch.float32))
        elif name.endswith("bias") and "bn" not in name:
            p.zero_()

images = torch.tensor(rs.normal(size=(16, 1, 8, 8)), dtype=torch.float32)
labels = torch.tensor(rs.randint(0, 3, size=16), dtype=torch.long)
optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

losses = []
model.train()
for step in range(6):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    losses.append(round(loss.item(), 6))

print(json.dumps({"losses": losses}))

"""An MNIST-style CNN trained with Adadelta and StepLR, written as a plain PyTorch script
(in the shape of pytorch/examples' mnist, our own code).

The "digits" are synthetic: each of the ten classes is its seven-segment rendering, randomly
shifted, thickened and noised, 28x28, generated with a NumPy RandomState so the data are the
same whichever library runs the script. The weights, too, come from NumPy (copied into the
parameters under no_grad), and dropout is present but with p=0 so both runs see the same
network. Prints ``{"losses": [...]}`` as its last stdout line.
"""
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

SEGMENTS = {  # which of the 7 segments (a..g) each digit lights
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg",
    5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg", 9: "abcdfg",
}


def render_digit(d, rs):
    img = np.zeros((28, 28), dtype=np.float32)
    top, left, h, w = 4 + rs.randint(0, 5), 6 + rs.randint(0, 7), 9, 8
    t = 1 + rs.randint(0, 2)  # stroke thickness
    boxes = {
        "a": (top, top + t, left, left + w), "d": (top + 2 * h, top + 2 * h + t, left, left + w),
        "g": (top + h, top + h + t, left, left + w),
        "f": (top, top + h, left, left + t), "b": (top, top + h, left + w - t, left + w),
        "e": (top + h, top + 2 * h, left, left + t), "c": (top + h, top + 2 * h, left + w - t, left + w),
    }
    for s in SEGMENTS[d]:
        r0, r1, c0, c1 = boxes[s]
        img[r0:min(r1, 28), c0:min(c1, 28)] = 1.0
    img += rs.normal(0.0, 0.2, size=img.shape).astype(np.float32)
    return img


def make_dataset(n, seed):
    rs = np.random.RandomState(seed)
    labels = rs.randint(0, 10, size=n)
    images = np.stack([render_digit(int(d), rs) for d in labels])[:, None]
    images = (images - 0.2) / 0.4  # roughly standardised, like MNIST's (0.1307, 0.3081)
    return torch.tensor(images), torch.tensor(labels, dtype=torch.int64)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.0)  # the example's 0.25, set to 0: the two RNGs differ
        self.dropout2 = nn.Dropout(0.0)
        self.fc1 = nn.Linear(16 * 12 * 12, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def init_from_numpy(model, seed):
    rs = np.random.RandomState(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = int(np.prod(p.shape[1:])) if p.dim() > 1 else p.shape[0]
            bound = 1.0 / np.sqrt(fan_in)
            p.copy_(torch.tensor(rs.uniform(-bound, bound, size=tuple(p.shape)).astype(np.float32)))


def train(model, loader, optimizer, losses):
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())


def evaluate(model, loader):
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for data, target in loader:
            pred = model(data).argmax(dim=1)
            correct += int((pred == target).sum().item())
            total += target.shape[0]
    return correct / total


def main():
    torch.manual_seed(1)
    x_train, y_train = make_dataset(256, seed=0)
    x_test, y_test = make_dataset(128, seed=1)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=16, shuffle=False)
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=64)
    model = Net()
    init_from_numpy(model, seed=2)
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    losses = []
    for epoch in range(1, 5):
        train(model, train_loader, optimizer, losses)
        acc = evaluate(model, test_loader)
        print(f"epoch {epoch}: loss {losses[-1]:.4f}, test accuracy {acc:.3f}, lr {scheduler.get_last_lr()[0]:.3f}")
        scheduler.step()
    print(json.dumps({"losses": losses, "accuracy": acc}))


if __name__ == "__main__":
    main()
